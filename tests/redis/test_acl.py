"""A broker whose ACL user lacks a command, a key or a channel that celeriac needs: what
is refused says what to grant, and what is half allowed never half commits."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import redis
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import BrokerConnectionError, BrokerError
from tests.redis_server import RedisServer, start_redis


@pytest.fixture
def acl_user(redis_server: RedisServer) -> Iterator[tuple[str, redis.Redis]]:
    """A fresh user name on the shared server, removed after the test, and an admin client."""
    admin = redis.Redis(port=redis_server.port)
    name = f"u{uuid.uuid4().hex[:10]}"
    yield name, admin
    admin.execute_command("ACL", "DELUSER", name)
    admin.close()


def test_a_user_without_channels_still_commits_every_result_of_a_batch(
    redis_server: RedisServer, acl_user: tuple[str, redis.Redis], prefix: str
) -> None:
    # Redis 7 gives a new ACL user no channel (acl-pubsub-default resetchannels), so the
    # settle script's wake-up PUBLISH is refused. The script had acked every task of the
    # batch before its first PUBLISH failed: the results after it were never stored.
    name, admin = acl_user
    admin.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "resetchannels", "+@all")
    broker = RedisBroker(f"redis://{name}:pw@127.0.0.1:{redis_server.port}/0?prefix={prefix}")
    try:
        broker.send([Outgoing(f"t{n}", "q", b"body") for n in range(3)])
        taken = broker.fetch(["q"], "w", limit=3, lease_seconds=60, timeout=5)
        assert len(taken) == 3
        # A result waiter somewhere (a web request in get()): commits publish wake-ups.
        admin.zadd(broker.keys.waiting, {"someone": int(time.time() * 1000) + 60_000})
        committed, _ = broker.complete_many(
            [(d.lease, f"r{d.lease.id}".encode()) for d in taken], 3600
        )
        assert committed == [True, True, True]
        for delivery in taken:
            assert broker.get_result(delivery.lease.id) == (f"r{delivery.lease.id}".encode(), True)
    finally:
        broker.close()


def test_a_user_without_channels_is_told_at_start_up(
    redis_server: RedisServer,
    acl_user: tuple[str, redis.Redis],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Settles skip a refused wake-up (above): only the start-up check can say it.
    name, admin = acl_user
    admin.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "resetchannels", "+@all")
    broker = RedisBroker(f"redis://{name}:pw@127.0.0.1:{redis_server.port}/0?prefix={prefix}")
    try:
        with caplog.at_level(logging.WARNING, "celeriac.brokers.redis.startup"):
            broker.check()
        assert f"ACL SETUSER {name} &{prefix}:*" in caplog.text
        assert f"publish to the channel {prefix}:done:" in caplog.text
    finally:
        broker.close()


def test_a_command_a_script_is_denied_is_named_with_its_grant(
    redis_server: RedisServer, acl_user: tuple[str, redis.Redis], prefix: str
) -> None:
    # Inside a script Redis 7.0 says only "The user executing the script can't run this
    # command or subcommand script: <sha1>, on @user_script:<line>": it read "refused the
    # command" with nothing to grant. Least-privilege grants by category miss TIME (@fast).
    name, admin = acl_user
    admin.execute_command(
        "ACL",
        "SETUSER",
        name,
        "on",
        ">pw",
        "~*",
        "&*",
        "+@read",
        "+@write",
        "+@scripting",
        "+@connection",
    )
    broker = RedisBroker(f"redis://{name}:pw@127.0.0.1:{redis_server.port}/0?prefix={prefix}")
    try:
        with pytest.raises(BrokerError) as caught:
            broker.fetch(["q"], "w", limit=1, lease_seconds=10, timeout=0)
        message = str(caught.value)
        assert f"denied it to the URL's user {name!r}" in message
        assert "celeriac's script fetch-15" in message
        assert f"ACL SETUSER {name} +time" in message
        assert not isinstance(caught.value, BrokerConnectionError)
    finally:
        broker.close()


@pytest.mark.parametrize("user", ["", "shop@"])
def test_a_url_without_the_password_the_server_requires_says_so(tmp_path: Path, user: str) -> None:
    # redis-py's handshake got "HELLO must be called with the client already
    # authenticated, otherwise the HELLO AUTH <user> <pass> option can be used...": the
    # error said the credentials were refused, when the URL had given none.
    server = start_redis(tmp_path / "r", extra=("--requirepass", "pw"), started=(b"-NOAUTH",))
    broker = RedisBroker(f"redis://{user}127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            broker.send([Outgoing("a", "q", b"a")])
        assert "requires a password and the broker URL gives none" in str(caught.value)
        assert "redis://:PASSWORD@host:6379/0" in str(caught.value)
    finally:
        broker.close()
        server.stop()


def test_a_wrong_password_is_still_called_refused_credentials(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "r", extra=("--requirepass", "pw"), started=(b"-NOAUTH",))
    broker = RedisBroker(f"redis://:nope@127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(BrokerConnectionError, match="refused this client's credentials"):
            broker.send([Outgoing("a", "q", b"a")])
    finally:
        broker.close()
        server.stop()


def test_a_batch_refused_halfway_says_part_was_queued_and_a_resend_completes_it(
    redis_server: RedisServer, acl_user: tuple[str, redis.Redis], prefix: str
) -> None:
    # A batch goes in one script call per queue (and per 500 messages): Redis ran the
    # call for queue a and refused the one for queue b (here the ACL; Redis full halfway
    # is the same). The error said the tasks were not sent (a full Redis: "nothing was
    # written"), and a job run again on that word, with new ids, queued a's tasks twice.
    name, admin = acl_user
    allowed = [f"~{prefix}:{{a}}:*", f"~{prefix}:r:*", f"~{prefix}:queues"]
    admin.execute_command("ACL", "SETUSER", name, "on", ">pw", *allowed, "&*", "+@all")
    url = f"redis://{name}:pw@127.0.0.1:{redis_server.port}/0?prefix={prefix}"
    broker = RedisBroker(url)
    batch = [Outgoing("t1", "a", b"x"), Outgoing("t2", "b", b"y")]
    try:
        with pytest.raises(BrokerError) as caught:
            broker.send(batch)
        assert "Some of these 2 messages may be queued all the same" in str(caught.value)
        assert "Send the same messages again" in str(caught.value)
        admin.execute_command("ACL", "SETUSER", name, f"~{prefix}:*")
        assert broker.send(batch) == [False, True]  # a's was queued: only b's is new
    finally:
        broker.close()


def test_a_user_who_may_not_ask_the_server_s_role_still_gets_its_counts(
    redis_server: RedisServer, acl_user: tuple[str, redis.Redis], prefix: str
) -> None:
    # `celeriac status` asks ROLE to say when the server is a replica; an ACL without it
    # must cost the note, not the counts.
    name, admin = acl_user
    admin.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all", "-role")
    broker = RedisBroker(f"redis://{name}:pw@127.0.0.1:{redis_server.port}/0?prefix={prefix}")
    try:
        broker.send([Outgoing("a", "q", b"body")])
        assert broker.notes() == []
        assert [s.ready for s in broker.stats()] == [1]
    finally:
        broker.close()
