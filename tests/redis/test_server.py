"""Start-up checks and a dead or restarting server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import redis
from celeriac import Celeriac
from celeriac.brokers import broker_from_url
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker, ops, startup
from celeriac.brokers.redis.keys import Keyspace
from celeriac.cli import cli
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError
from celeriac.testing import wait_for
from tests.conftest import Ledger, WorkerProcesses, run_celeriac
from tests.redis_server import RedisServer, free_port, start_redis, start_tls_redis


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up warnings are logged once per process tree: forget earlier tests' (a free
    port, and so a server's URL, can come round again)."""
    monkeypatch.setattr(startup, "_warned", set())


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private servers for one test (``own_server(*options, aof=False)``)."""
    started: list[RedisServer] = []

    def start(*extra: str, aof: bool = False) -> RedisServer:
        server = start_redis(tmp_path / f"redis{len(started)}", extra=extra, appendonly=aof)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


Server = Callable[..., RedisServer]


def test_an_evicting_policy_is_refused(own_server: Server) -> None:
    broker = RedisBroker(own_server("--maxmemory-policy", "allkeys-lru").url)
    try:
        with pytest.raises(ConfigurationError, match="maxmemory-policy noeviction"):
            broker.send([Outgoing("a", "q", b"a")])
        with pytest.raises(ConfigurationError, match="allkeys-lru"):
            broker.check()
    finally:
        broker.close()


def test_an_evicting_policy_is_refused_by_the_async_face(own_server: Server) -> None:
    broker = RedisBroker(own_server("--maxmemory-policy", "volatile-ttl").url)
    try:
        with pytest.raises(ConfigurationError, match="volatile-ttl"):
            asyncio.run(broker.asend([Outgoing("a", "q", b"a")]))
    finally:
        broker.close()


def test_persistence_off_is_a_warning(own_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    broker = RedisBroker(own_server().url)
    try:
        with caplog.at_level(logging.WARNING, "celeriac.brokers.redis"):
            assert broker.send([Outgoing("a", "q", b"a")]) == [True]
        assert "persistence off" in caplog.text and "appendonly yes" in caplog.text
    finally:
        broker.close()


Rig = Callable[[str], tuple[WorkerProcesses, Celeriac]]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """``rig(url)``: worker processes and a producer app on that broker, all stopped (by
    PID) at teardown."""
    made: list[tuple[WorkerProcesses, Celeriac]] = []

    def make(url: str) -> tuple[WorkerProcesses, Celeriac]:
        made.append((WorkerProcesses(url, Ledger(tmp_path / "ledger.txt")), Celeriac("p", url)))
        return made[-1]

    yield make
    for workers, app in made:
        app.broker.close()
        workers.kill_all()


def test_a_worker_warns_once_not_once_per_child(own_server: Server, rig: Rig) -> None:
    workers, app = rig(own_server().url)
    proc = workers.start("-c", "2")
    # Two tasks that each hold a child for a while: both children have called the broker.
    for _ in range(2):
        app.send_task("tests.apps.core.work", args=(0.3,))

    def children_that_ran() -> int:
        return len({line[2] for line in workers.ledger.lines()})  # the pid column

    assert wait_for(lambda: children_that_ran() == 2, timeout=20), workers.log_text()
    assert workers.stop(proc) == 0
    assert workers.log_text().count("persistence off") == 1, workers.log_text()


def test_a_worker_started_before_redis_waits_for_it(tmp_path: Path, rig: Rig) -> None:
    port = free_port()
    workers, app = rig(f"redis://127.0.0.1:{port}/0")
    proc = workers.start("-c", "1", wait=False)
    assert wait_for(lambda: "cannot reach the broker yet" in workers.log_text(), timeout=20)
    assert proc.poll() is None, workers.log_text()  # waiting, not gone
    server = start_redis(tmp_path / "redis", port=port)
    try:
        result = app.send_task("tests.apps.core.add", args=(2, 3))
        assert result.get(timeout=30) == 5, workers.log_text()
        assert "reached the broker after" in workers.log_text()
        assert workers.stop(proc) == 0
    finally:
        server.stop()


def test_an_outage_is_a_few_log_lines_and_its_end_is_said(own_server: Server, rig: Rig) -> None:
    server = own_server()
    workers, app = rig(server.url)
    proc = workers.start("-c", "1")
    server.kill()
    time.sleep(4)  # ~4 supervisor tries (it logged every 50 ms tick), child backoff to 1.6 s
    restarted = start_redis(server.folder, port=server.port)
    try:
        assert app.send_task("tests.apps.core.add", args=(1, 2)).get(timeout=30) == 3
        assert wait_for(lambda: "answers again" in workers.log_text(), timeout=10), (
            workers.log_text()
        )
        log = workers.log_text()
        assert log.count("cannot reach the broker") == 1, log  # the supervisor's
        assert log.count("broker unavailable") <= 2, log  # the child's (fetch, commit)
        assert "the broker answers again after" in log, log
        assert workers.stop(proc) == 0
    finally:
        restarted.stop()


def test_a_broker_that_answers_with_a_refusal_is_not_called_unreachable(
    own_server: Server, rig: Rig
) -> None:
    # A Redis busy running a script answers every call "BUSY": the supervisor said it
    # "cannot reach the broker", sending an operator after the network, not SLOWLOG.
    server = own_server("--busy-reply-threshold", "100")
    workers, app = rig(server.url)
    proc = workers.start("-c", "1")
    runner, admin = redis.Redis(port=server.port), redis.Redis(port=server.port)
    spin = threading.Thread(target=_swallow(lambda: runner.eval("while true do end", 0)))
    try:
        busy = app.send_task("tests.apps.core.work", args=(2,))  # it commits in the outage
        assert wait_for(lambda: workers.ledger.count("start")[busy.id] == 1, timeout=20)
        spin.start()
        said = ("finds the broker refusing its calls", "the broker refuses its calls")
        assert wait_for(lambda: all(w in workers.log_text() for w in said), timeout=20), (
            workers.log_text()
        )
        admin.script_kill()
        spin.join(timeout=10)
        assert app.send_task("tests.apps.core.add", args=(1, 2)).get(timeout=30) == 3
        assert busy.get(timeout=30) == ""  # its commit waited, then went through
        log = workers.log_text()
        assert "finds the broker refusing its calls (could not" in log, log
        assert "is busy running a script" in log, log
        assert "cannot reach the broker" not in log, log
        assert "the broker refuses its calls (could not" in log, log  # a child's
        assert "retrying with backoff until it accepts them" in log, log
        assert "broker unavailable" not in log, log
        assert workers.stop(proc) == 0
    finally:
        runner.close()
        admin.close()


def _swallow(call: Callable[[], object]) -> Callable[[], None]:
    """``call``, made to end quietly with the error a killed script ends with."""

    def run() -> None:
        with contextlib.suppress(redis.RedisError):
            call()

    return run


def test_aof_on_is_quiet(own_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    broker = RedisBroker(own_server(aof=True).url)
    try:
        with caplog.at_level(logging.WARNING, "celeriac.brokers.redis"):
            broker.check()
        assert caplog.text == ""
    finally:
        broker.close()


def test_config_get_disabled_warns_and_continues(
    own_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server = own_server("--rename-command", "CONFIG", "", "--rename-command", "INFO", "")
    broker = RedisBroker(server.url)
    try:
        with caplog.at_level(logging.WARNING, "celeriac.brokers.redis"):
            assert broker.send([Outgoing("a", "q", b"a")]) == [True]
        assert "cannot run CONFIG GET" in caplog.text
    finally:
        broker.close()


def test_a_command_the_acl_denies_names_the_user_not_a_dead_server(own_server: Server) -> None:
    server = own_server()
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "shop", "on", ">pw", "~*", "&*", "+@all", "-evalsha")
    admin.close()
    broker = RedisBroker(f"redis://shop:pw@127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(BrokerError, match="denied it to the URL's user") as caught:
            broker.send([Outgoing("a", "q", b"a")])
        assert not isinstance(caught.value, BrokerConnectionError)  # not retried forever
    finally:
        broker.close()


def test_a_dead_server_raises_broker_connection_error() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    broker = broker_from_url(url)
    assert isinstance(broker, RedisBroker)  # constructing does not connect
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            broker.send([Outgoing("a", "q", b"a")])
        message = str(caught.value)
        assert "s3cret" not in message and "user:***@127.0.0.1" in message
        assert "could not check the server" in message and "Check that redis-server" in message
        assert caught.value.__cause__ is not None
        with pytest.raises(BrokerConnectionError):
            asyncio.run(broker.await_result("t", 1))
    finally:
        broker.close()


def test_a_tls_url_at_a_plain_port_fails_within_the_connect_timeout(
    redis_server: RedisServer,
) -> None:
    # redis-py ran the TLS handshake under the socket timeout: a rediss:// URL pointed at
    # a plain Redis (which waits for a newline that never comes) failed only after three
    # tries of socket_timeout, 90 s with the defaults; here that would be 30 minutes.
    url = f"rediss://127.0.0.1:{redis_server.port}/0?socket_timeout=600&socket_connect_timeout=1"
    broker = broker_from_url(url)
    started = time.monotonic()
    try:
        with pytest.raises(BrokerConnectionError, match="did not answer") as caught:
            broker.send([Outgoing("a", "q", b"a")])
    finally:
        broker.close()
    assert time.monotonic() - started < 300  # bounded by the connect timeout, not 3 x 600 s
    assert "for a server without TLS, use redis://" in str(caught.value)  # the likely cause


def test_a_host_name_that_does_not_resolve_is_named() -> None:
    # It read "did not answer ... Check that redis-server is running": an operator went
    # to look at the server, when the URL's host (a service's name) was wrong or DNS down.
    broker = broker_from_url("redis://no-such-host.invalid:6379/0")
    try:
        with pytest.raises(BrokerConnectionError) as caught:  # workers retry: DNS may come up
            broker.send([Outgoing("a", "q", b"a")])
        with pytest.raises(BrokerConnectionError) as caught_async:
            asyncio.run(broker.asend([Outgoing("a", "q", b"a")]))
    finally:
        broker.close()
    for error in (caught.value, caught_async.value):
        message = str(error)
        said = "the host name in the broker URL redis://no-such-host.invalid:6379/0 does not"
        assert f"{said} resolve" in message
        assert "Check that redis-server is running" not in message


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    """A redis-server that also serves TLS (see start_tls_redis)."""
    server, tls_port, cert = start_tls_redis(tmp_path)
    yield server, tls_port, cert
    server.stop()


def test_tls_mismatches_say_tls(tls_server: tuple[RedisServer, int, Path]) -> None:
    # A plain redis:// URL at a TLS port (a managed service's 6380) and a certificate the
    # client does not trust both read "did not answer ... check that redis-server is
    # running", with TLS named only in a list of things to check.
    _, tls_port, cert = tls_server
    plain = broker_from_url(f"redis://127.0.0.1:{tls_port}/0")
    untrusted = broker_from_url(f"rediss://127.0.0.1:{tls_port}/0")
    trusted = broker_from_url(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}")
    try:
        with pytest.raises(BrokerConnectionError, match=r"if so, use rediss://"):
            plain.send([Outgoing("a", "q", b"a")])
        with pytest.raises(BrokerConnectionError) as caught:
            untrusted.send([Outgoing("a", "q", b"a")])
        message = str(caught.value)
        assert "presented a TLS certificate this client does not trust" in message
        assert "ssl_ca_certs=/path/to/ca.pem" in message
        assert "Check that redis-server is running" not in message
        assert trusted.send([Outgoing("a", "q", b"a")]) == [True]  # the advice works
    finally:
        for broker in (plain, untrusted, trusted):
            broker.close()


def test_the_broker_recovers_when_the_server_restarts(own_server: Server) -> None:
    server = own_server()
    broker = RedisBroker(server.url)
    try:
        assert broker.send([Outgoing("a", "q", b"a")]) == [True]
        server.kill()
        with pytest.raises(BrokerConnectionError, match="could not send messages"):
            broker.send([Outgoing("b", "q", b"b")])
        restarted = start_redis(server.folder, port=server.port)
        try:
            assert broker.send([Outgoing("b", "q", b"b")]) == [True]  # same broker object
            got = broker.fetch(["q"], "w", limit=5, lease_seconds=30, timeout=0)
            assert [d.id for d in got] == ["b"]  # no persistence: "a" died with the server
        finally:
            restarted.stop()
    finally:
        broker.close()


def test_redis_before_7_is_refused() -> None:
    # Plans do no I/O, so the start-up check can be driven with made-up replies.
    plan = startup.check_server(ops.Context(Keyspace("p"), False, set()), "redis://old:6379/0")
    next(plan)  # PING
    plan.send([("old:6379", b"PONG")])  # INFO server
    with pytest.raises(ConfigurationError, match=r"version 6\.2\.6; celeriac needs Redis 7\.0"):
        plan.send([("old:6379", {"redis_version": "6.2.6"})])


Pair = tuple[RedisServer, RedisServer, redis.Redis]


@pytest.fixture
def replica_of(own_server: Server) -> Iterator[Pair]:
    """A primary, its replica, and a plain client on the replica (closed at the end)."""
    primary = own_server()
    replica = own_server("--replicaof", "127.0.0.1", str(primary.port))
    raw = redis.Redis(port=replica.port)
    yield primary, replica, raw
    raw.close()


def test_a_replica_is_named_and_its_connection_not_reused(replica_of: Pair) -> None:
    # After a failover the old primary is a replica: writes were "refused the command:
    # READONLY ..." (not a connection error: no reconnect), and the pooled connection
    # went on to the replica for ever, where a new one may reach the new primary.
    _, replica, raw = replica_of
    broker = RedisBroker(replica.url)
    try:
        with pytest.raises(BrokerConnectionError, match="is a read-only replica"):
            broker.send([Outgoing("a", "q", b"a")])
        before = raw.info("stats")["total_connections_received"]
        raw.execute_command("REPLICAOF", "NO", "ONE")  # promoted: the same address writes
        assert broker.send([Outgoing("a", "q", b"a")]) == [True]
        assert raw.info("stats")["total_connections_received"] == before + 1  # a fresh one
    finally:
        broker.close()


def test_status_on_a_replica_says_so_above_its_counts(replica_of: Pair) -> None:
    # After a failover, `celeriac status` on the old primary's address showed the copied
    # counts as a healthy broker's, with no word that nothing could be sent or taken there.
    primary, replica, raw = replica_of
    sender = RedisBroker(primary.url)
    try:
        sender.send([Outgoing("a", "q", b"a")])
        assert wait_for(lambda: raw.info("replication")["master_link_status"] == "up")
        assert wait_for(lambda: raw.exists(sender.keys.queue("q").ready[0]) == 1)
        said = CliRunner().invoke(cli, ["-b", replica.url, "status"])
        assert said.exit_code == 0, said.output
        text = " ".join(said.output.split())
        assert text.startswith(
            f"note: Redis at {replica.url} is a read-only replica of 127.0.0.1:{primary.port} "
            "(replication link: connected): these counts are copied from it, and no task can "
            "be sent or taken here."
        ), text
        as_json = CliRunner().invoke(cli, ["-b", replica.url, "status", "--json"])
        assert json.loads(as_json.output)["notes"][0].startswith(f"Redis at {replica.url} is")
        assert json.loads(as_json.output)["queues"][0]["ready"] == 1
        on_primary = CliRunner().invoke(cli, ["-b", primary.url, "status", "--json"])
        assert json.loads(on_primary.output)["notes"] == []
    finally:
        sender.close()


def test_a_frozen_server_costs_a_producer_one_timeout_not_three(own_server: Server) -> None:
    # A process's first send checks the server through redis-py's client, whose retry
    # policy retried a timeout like a broken socket: a web request's delay() to a frozen
    # Redis (SIGSTOP, a paused VM, a partition) waited 3 x socket_timeout, 90 s with the
    # defaults, opening a connection per try. The hot path (wire.py) already tried once.
    server = own_server()
    raw = redis.Redis(port=server.port)
    app = Celeriac("frozen", broker=f"{server.url}?socket_timeout=0.5")
    message = app.task_named("shop.add").message((1, 2))
    try:
        before = raw.info("stats")["total_connections_received"]
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerConnectionError, match="did not answer"):
                app.publish(message)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        # Redis accepts its backlog in order: once a new client's PING is answered, every
        # connection the producer opened while the server was stopped has been counted.
        with redis.Redis(port=server.port) as last:
            last.ping()
        assert raw.info("stats")["total_connections_received"] - before == 1 + 1  # + last
    finally:
        app.broker.close()
        raw.close()


def test_ping_and_inspect_give_a_frozen_server_their_timeout_not_thirty_seconds(
    own_server: Server, tmp_path: Path
) -> None:
    # A health check or an operator's `ping --timeout 1` against a stopped Redis (SIGSTOP,
    # a paused VM) printed nothing for the broker's 30 s socket timeout, then said "check
    # that redis-server is running" of a server that was. Each call now waits --timeout
    # plus 2 s; a socket_timeout the URL gives is kept.
    server = own_server()
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        for command, waited in (
            (("--broker", server.url, "ping", "--timeout", "1"), "3s"),
            (("--broker", server.url, "inspect", "active", "--timeout", "0.5"), "2.5s"),
            (("--broker", f"{server.url}?socket_timeout=1.5", "ping", "--timeout", "4"), "1.5s"),
        ):
            done = run_celeriac(*command, cwd=tmp_path)
            assert done.returncode == 1, done.stderr
            assert f"did not answer within {waited} (socket_timeout)" in done.stderr
            assert "stopped or frozen" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_an_async_send_with_a_dedupe_key_leaves_the_event_loop_free(own_server: Server) -> None:
    # The dedupe hook calls the broker's sync face: run on the event loop, a frozen Redis
    # (SIGSTOP, a paused VM) stopped every coroutine of the process, every request of an
    # async web server, until the socket timed out. In a thread, only this send waits.
    server = own_server()
    app = Celeriac("frozen", broker=f"{server.url}?prefix=frozen-aio&socket_timeout=1")
    add = app.task_named("shop.add")
    add.apply_async((1, 1), task_id="before")  # the connection is open and checked

    async def ticks_during_the_send() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            with pytest.raises(BrokerConnectionError):
                await add.aapply_async((1, 2), dedupe_key="report-7")
        finally:
            ticker.cancel()
        return ticks

    try:
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            ticks = asyncio.run(ticks_during_the_send())
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert ticks >= 10, f"the event loop ran {ticks} times in the send's second"
    finally:
        app.broker.close()


def test_a_send_redis_did_not_answer_says_it_may_be_queued(own_server: Server) -> None:
    # The script reached a stopped Redis, which ran it once it ran again; the error said
    # "task ... was not sent", and a web request that sent the task again on that word,
    # under a new id, ran it twice.
    server = own_server()
    app = Celeriac("frozen", broker=f"{server.url}?prefix=frozen&socket_timeout=0.5")
    add = app.task_named("shop.add")
    try:
        add.apply_async((1, 1), task_id="before")  # the connection is open and checked
        # The second send of a queue is one delay()'s own script: now cached in Redis, which
        # would otherwise answer the frozen send with NOSCRIPT once it ran again.
        add.apply_async((1, 1), task_id="before-2")
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerConnectionError) as caught:
                add.apply_async((1, 2), task_id="frozen-1")
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        said = str(caught.value)
        assert said.startswith("task shop.add[frozen-1] was perhaps not sent (it may be queued)")
        assert "Send it again under the same id" in said and "task_id=ID" in said
        assert caught.value.maybe_done
        queued = wait_for(lambda: app.broker.stats()[0].ready == 3, timeout=10)
        assert queued, app.broker.stats()  # Redis ran the send it had not answered
        add.apply_async((1, 2), task_id="frozen-1")  # the advice: same id, queued once
        assert app.broker.stats()[0].ready == 3
    finally:
        app.broker.close()


def _in_a_fork(work: Callable[[], str]) -> str:
    """Fork; the child runs ``work`` and reports what it returned through a pipe, or the
    class name of what it raised."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked child
        code = 0
        try:
            os.close(read_end)
            try:
                said = work()
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                said = type(exc).__name__
            os.write(write_end, said.encode())
        except BaseException:  # noqa: BLE001 - never return into pytest in a fork
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said
    return said


def _send_in_a_fork(url: str) -> str:
    """Fork; the child sends one message on a new broker for ``url`` and reports what
    happened: "sent", or the error's class name."""

    def send() -> str:
        RedisBroker(url).send([Outgoing("forked", "q", b"a")])
        return "sent"

    return _in_a_fork(send)


def test_a_child_forked_right_after_its_parents_check_skips_its_own(
    own_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's first children do not repeat the supervisor's start-up check (six round
    # trips before their first task); one forked later, or a new broker in the process
    # that checked, checks again. Shown by an evicting policy set after the parent's check.
    server = own_server()
    parent = RedisBroker(server.url)
    try:
        parent.check()
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        assert _send_in_a_fork(server.url) == "sent"
        monkeypatch.setattr(startup, "CHECK_INHERITED_FOR", 0.0)
        assert _send_in_a_fork(server.url) == "ConfigurationError"
        again = RedisBroker(server.url)
        try:
            with pytest.raises(ConfigurationError, match="allkeys-lru"):
                again.send([Outgoing("again", "q", b"a")])
        finally:
            again.close()
    finally:
        parent.close()


def _fetches_while_a_delayed_message_comes_due(broker: RedisBroker, url: str) -> int:
    """Send a message due in 0.6 s, fetch until it arrives, and count the scripts the
    server ran meanwhile: the fetches of the stretch slept in steps before its due time."""
    raw = redis.Redis.from_url(url)
    try:
        broker.send([Outgoing("later", "q", b"a", eta=time.time() + 0.6)])
        raw.config_resetstat()
        taken = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=5)
        assert [d.id for d in taken] == ["later"]
        calls = raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        return int(calls)
    finally:
        raw.close()


def test_the_fetch_steps_through_the_servers_own_timer_tick_only(own_server: Server) -> None:
    # A BLPOP's timeout ends on the server's timer tick (1/hz), so the fetch ends its
    # block a tick before a delayed message is due and steps through the rest, fetching
    # every 5 ms. The tick is read from the server: at hz 100 that is 10 ms of steps (a
    # few fetches), not the default hz 10's 100 ms (about 20 fetches per message).
    server = own_server("--hz", "100")
    broker = RedisBroker(server.url)
    try:
        assert _fetches_while_a_delayed_message_comes_due(broker, server.url) <= 6
    finally:
        broker.close()


def test_a_child_that_skips_its_check_sizes_its_steps_by_its_parents(own_server: Server) -> None:
    # A worker's first children skip the start-up check (see
    # test_a_child_forked_right_after_its_parents_check_skips_its_own): they take the
    # timer tick their supervisor's check read.
    server = own_server("--hz", "100")
    parent = RedisBroker(server.url)
    try:
        parent.check()
        said = _in_a_fork(
            lambda: str(
                _fetches_while_a_delayed_message_comes_due(RedisBroker(server.url), server.url)
            )
        )
        assert int(said) <= 6, said
    finally:
        parent.close()
