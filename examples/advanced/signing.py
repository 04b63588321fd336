"""Signed messages, key rotation, msgpack, and what a worker refuses.

Settings (celeriac.config.Settings; CELERIAC_* environment variables work too):

    task_signing_key   a key, or a list of keys: the first signs, every one verifies, so
                       a key rotates without downtime. An app with a key refuses unsigned
                       and badly signed messages: they are dead-lettered, never run.
    task_serializer    "json" (default), "msgpack" (binary, usually smaller) or "pickle".
    accept_content     the formats a worker reads (default ["json", "msgpack"]). Workers
                       read every accepted format whatever their own task_serializer, so
                       producers and workers switch format one at a time.
    pickle             opt-in only: task_serializer="pickle" and "pickle" in
                       accept_content. A pickled message runs code when it is read, so
                       anyone who can write to the broker can run code on the workers;
                       the app logs a warning. Sign the messages if you must use it.

Rotating a key, with no message refused on the way: 1. every app gets ["old", "new"]
(signs with old, verifies both); 2. every app gets ["new", "old"] (signs with new);
3. once no message signed with the old key is queued, every app gets "new".

Run it, in this folder:  python signing.py
It runs the tasks in this process on the in-memory broker (celeriac.testing.run_queued);
four app objects (the worker's and three producers') share that broker with use_broker().
"""

from __future__ import annotations

from typing import Any

from celeriac import Celeriac
from celeriac.testing import run_queued

# The worker's app: signs with key-2026, still verifies key-2025 (rotation under way),
# and sends msgpack. Keys come from a secret store or the environment in real life
# (CELERIAC_TASK_SIGNING_KEY='["key-2026", "key-2025"]').
worker = Celeriac(
    "payments",
    task_signing_key=["key-2026", "key-2025"],
    task_serializer="msgpack",
    accept_content=["json", "msgpack"],
)
worker.conf.broker_url = "memory://"  # in this process (an assignment overrides the env)


@worker.task
def transfer(account: int, cents: int) -> str:
    """Move money out of one account."""
    return f"moved {cents} cents from account {account}"


def producer(**settings: Any) -> Celeriac:
    """Another app (another service, in real life) that sends to the worker's broker."""
    app = Celeriac("payments", **settings)
    app.conf.broker_url = "memory://"
    app.use_broker(worker.broker)  # a broker object instead of one made from broker_url
    return app


def main() -> None:
    """Send signed, old-key-signed and unsigned messages; run them; show what happened."""
    signed = transfer.delay(1, 500)
    # app.codec encodes as the settings say: a signed msgpack message.
    body = worker.codec.encode(transfer.message((1, 500)))
    print("on the wire:", body.split(b":")[0].decode(), "+ key id + HMAC + msgpack payload")

    # A producer not yet given the new key: its messages still verify.
    old = producer(task_signing_key="key-2025")
    not_yet_rotated = old.send_task("signing.transfer", (2, 300))
    # A producer with no key at all (or a forged message): refused, never run.
    unsigned = producer().send_task("signing.transfer", (3, 999))

    run_queued(worker)
    print(signed.get(timeout=5))
    print(not_yet_rotated.get(timeout=5))
    print("unsigned:", unsigned.state)

    # pickle is refused unless accept_content names it: a pickling producer's message is
    # dead-lettered unread by a worker that does not accept pickle.
    pickler = producer(
        task_signing_key="key-2026", task_serializer="pickle", accept_content=["json", "pickle"]
    )
    pickled = pickler.send_task("signing.transfer", (4, 100))
    run_queued(worker)
    print("pickled:", pickled.state)
    for letter in sorted(worker.broker.dead_letters(), key=lambda d: d.reason):
        print("dead-lettered:", letter.reason)


if __name__ == "__main__":
    main()
