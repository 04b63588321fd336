"""Beat when Redis freezes or a scheduler is paused: real redis-server, real `celeriac beat`.

A frozen Redis (SIGSTOP) stalls every scheduler's pass without an error; a scheduler
paused (SIGSTOP, a suspended VM) while it holds a claim wakes up with a claim that has
lapsed and a tick that another scheduler has sent since. These tests freeze exactly there
— a loopback proxy stops the scheduler when a chosen request goes by — and check that the
resumed scheduler neither sends that tick again nor rewinds the entry's state, and that
the logs say what happened. Every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from celeriac import Celeriac
from celeriac.beat import tick_id
from celeriac.testing import wait_for
from tests.conftest import Ledger
from tests.redis_server import RedisServer, start_redis
from tests.test_beat_processes import Schedulers

pytestmark = pytest.mark.slow

APP = "tests.apps.periodic"  # its every-second entry runs too: schedulers stay busy
ENTRY = "pause-me"  # added at run time, every 2 s: claims last 1 s, a tick is on time 1 s


class FreezingProxy:
    """A loopback proxy to Redis that SIGSTOPs its client process at a chosen request.

    When a request for which ``trigger`` is true gets a reply for which ``accept`` is true,
    the proxy stops the process, waits until it is stopped, and only then relays the reply:
    the process wakes (SIGCONT, by the test) to the reply it was waiting for, exactly as a
    scheduler paused at that point would. It fires once.
    """

    def __init__(
        self,
        upstream_port: int,
        trigger: Callable[[bytes], bool],
        accept: Callable[[bytes], bool] = lambda reply: True,
    ) -> None:
        self.upstream_port = upstream_port
        self.trigger, self.accept = trigger, accept
        self.pid = 0
        self.request = b""  # the request that froze the process
        self.armed = threading.Event()
        self.frozen = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for sock in [self._listener, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            self._sockets += [client, server]
            pending: list[bytes] = []  # the triggering request whose reply is awaited
            threading.Thread(target=self._up, args=(client, server, pending), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, pending), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, pending: list[bytes]) -> None:
        while data := _recv(client):
            if self.armed.is_set() and self.trigger(data):
                pending.append(data)
            with contextlib.suppress(OSError):
                server.sendall(data)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _down(self, server: socket.socket, client: socket.socket, pending: list[bytes]) -> None:
        while data := _recv(server):
            if pending and self.armed.is_set():
                request = pending.pop()
                if self.accept(data):
                    self.armed.clear()
                    self.request = request
                    os.kill(self.pid, signal.SIGSTOP)
                    wait_for(lambda: psutil.Process(self.pid).status() == "stopped", 10)
                    self.frozen.set()
            with contextlib.suppress(OSError):
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def schedulers(tmp_path: Path) -> Iterator[Schedulers]:
    """`celeriac beat` processes; each test names each one's broker URL."""
    procs = Schedulers("", Ledger(tmp_path / "ledger.txt"))
    yield procs
    procs.kill_all()


def start(schedulers: Schedulers, broker_url: str) -> subprocess.Popen[bytes]:
    """Start a scheduler on ``broker_url`` and wait for its first pass."""
    proc = schedulers.start(broker_url)
    schedulers.wait_ready(proc)
    return proc


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: the test freezes it."""
    server = start_redis(tmp_path / "redis")
    yield server
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def sent_ticks(logs: str, entry: str) -> Counter[str]:
    """How many times schedulers logged sending each tick (by task id) of ``entry``."""
    sent = rf"beat: sent tick of {re.escape(entry)} for \S+ as task ([^\s,]+)"
    return Counter(re.findall(sent, logs))


def frozen_tick(request: bytes) -> float:
    """The fire time of the tick claimed (its key) or sent (its headers) by a request."""
    claim = re.search(rb"beat:tick:" + ENTRY.encode() + rb":(\d+)", request)
    if claim is not None:
        return int(claim.group(1)) / 1000
    header = re.search(rb'"beat_tick":([0-9.]+)', request)
    assert header is not None, request
    return float(header.group(1))


# -- a scheduler paused while it holds a claim ----------------------------------------------


CLAIM = (
    lambda data: b"claimed " in data and f"beat:tick:{ENTRY}:".encode() in data,
    # It won the claim: kv_set-1.lua answers 1 (0: another scheduler did).
    lambda reply: reply.startswith(b":1"),
)
SEND = (
    lambda data: b"EVAL" in data and f"beat:{ENTRY}:".encode() in data,
    lambda reply: True,
)


@pytest.mark.parametrize("stage", ["after its claim", "after its send"])
def test_a_scheduler_resumed_after_a_pause_does_not_rewind_or_resend_a_tick(
    redis_server: RedisServer, schedulers: Schedulers, stage: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    direct = f"{redis_server.url}?prefix={prefix}"
    trigger, accept = CLAIM if stage == "after its claim" else SEND
    proxy = FreezingProxy(redis_server.port, trigger, accept)
    app = Celeriac("probe", broker=direct)
    try:
        app.beat.add(ENTRY, f"{APP}.tick", every=2)
        paused = start(schedulers, f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}")
        other = start(schedulers, direct)
        proxy.pid = paused.pid
        proxy.armed.set()
        assert proxy.frozen.wait(20), schedulers.all_logs()
        tick = frozen_tick(proxy.request)
        # The other scheduler carries on: it takes the tick over and sends the next ones.
        carried_on = wait_for(lambda: (app.beat.get(ENTRY).last_run or 0) >= tick + 4, 20)
        assert carried_on, schedulers.all_logs()
        app.beat.pause(ENTRY)
        assert schedulers.stop(other) == 0
        newest = app.beat.get(ENTRY).last_run
        os.kill(paused.pid, signal.SIGCONT)
        # Its next pass reads the entries again (and logs the pause): the interrupted
        # tick is settled by then.
        resumed = f"entry {ENTRY} paused"
        assert wait_for(lambda: resumed in schedulers.log_of(paused), 20), schedulers.all_logs()

        assert app.beat.get(ENTRY).last_run == newest, (
            "the resumed scheduler wrote an older last tick over the newer one:\n"
            + schedulers.all_logs()
        )
        said = [line for line in schedulers.log_of(paused).splitlines() if "was paused" in line]
        assert any(ENTRY in line for line in said), "the stall is not explained:\n" + "\n".join(
            schedulers.log_of(paused).splitlines()[-6:]
        )
        if stage == "after its claim":  # its claim lapsed: the other scheduler sent the tick
            sends = sent_ticks(schedulers.text(), ENTRY)
            assert sends[tick_id(ENTRY, tick)] == 1, (
                "a tick another scheduler took over was sent again:\n" + schedulers.all_logs()
            )
        assert schedulers.stop(paused) == 0
    finally:
        proxy.close()
        app.broker.close()


def test_a_tick_claimed_by_a_scheduler_killed_before_sending_it_is_sent_by_another(
    redis_server: RedisServer, schedulers: Schedulers
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    direct = f"{redis_server.url}?prefix={prefix}"
    proxy = FreezingProxy(redis_server.port, *CLAIM)
    app = Celeriac("probe", broker=direct)
    try:
        app.beat.add(ENTRY, f"{APP}.tick", every=2)
        doomed = start(schedulers, f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}")
        start(schedulers, direct)
        proxy.pid = doomed.pid
        proxy.armed.set()
        assert proxy.frozen.wait(20), schedulers.all_logs()
        tick = frozen_tick(proxy.request)
        os.kill(doomed.pid, signal.SIGKILL)  # between its claim and its send
        doomed.wait(timeout=10)
        # The survivor looks again when the claim lapses (1 s), before the next tick (2 s).
        next_sent = wait_for(lambda: (app.beat.get(ENTRY).last_run or 0) >= tick + 2, 20)
        assert next_sent, schedulers.all_logs()
        sends = sent_ticks(schedulers.text(), ENTRY)
        assert sends[tick_id(ENTRY, tick)] == 1, (
            "the tick of a scheduler killed between claim and send was lost:\n"
            + schedulers.all_logs()
        )
    finally:
        proxy.close()
        app.broker.close()


# -- a frozen Redis ------------------------------------------------------------------------


def test_ticks_lost_to_a_frozen_redis_are_said_and_none_is_sent_twice(
    private_redis: RedisServer, schedulers: Schedulers
) -> None:
    url = f"{private_redis.url}?prefix=t{uuid.uuid4().hex[:12]}"
    procs = [start(schedulers, url), start(schedulers, url)]
    assert wait_for(lambda: sum(sent_ticks(schedulers.text(), "every-second").values()) >= 2)
    before = [len(log.read_text()) for log in schedulers.logs]
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    try:
        # Four seconds: far below the 30-s socket timeout, so no call fails; passes stall.
        assert not wait_for(lambda: any(p.poll() is not None for p in procs), 4)
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)

    def explained() -> bool:
        logs = zip(schedulers.logs, before, strict=True)
        since = "".join(log.read_text()[size:] for log, size in logs)
        return any("every-second" in ln and "did not answer" in ln for ln in since.splitlines())

    assert wait_for(explained, 20), (
        "four seconds of ticks were lost without a word on why:\n" + schedulers.all_logs()
    )
    sends = sent_ticks(schedulers.text(), "every-second")
    assert max(sends.values()) == 1, f"a tick was sent twice: {sends.most_common(2)}"
    assert [schedulers.stop(p) for p in procs] == [0, 0]
