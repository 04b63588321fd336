"""The torture harness: scale, timing, the ledger, producers, worker processes, the oracle.

The ledger is a file outside the broker under test, appended to with single ``O_APPEND``
writes by every process (see :mod:`tests.torture.app`). Producers log ``sendcall`` before
and ``sendack`` after the broker confirmed a send; tasks log ``start``/``end``; the
workers' middleware logs ``commit``/``dead`` once the broker confirmed them.

The oracle (Jepsen's total-queue vocabulary) waits until every acknowledged id has a
terminal state in celeriac, then stays quiet for longer than a lease plus the reaper's
interval, so that a stale copy that would run again has had its chance, and reports:

* **lost**: acknowledged send, no terminal state (committed result, dead letter, EXPIRED,
  REVOKED);
* **double commit**: more than one committed execution for an id (two ``commit`` lines,
  or a stored token that differs from the committed one);
* **duplicates**: executions per id, as a histogram;
* **unexpected**: a terminal state or an execution for an id nobody sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import redis
from celeriac import Celeriac
from celeriac.brokers.records import DeadLetter
from celeriac.errors import BrokerError
from celeriac.message import Message, decode_result
from tests.conftest import Ledger as CoreLedger
from tests.conftest import WorkerProcesses
from tests.torture.app import LEDGER_ENV, append

LONG = os.environ.get("TORTURE_SCALE", "ci") == "long"
APP = "tests.torture.app"


def scaled(ci: int, long: int) -> int:
    """A count for this run: small in CI, the issue's full number under --long."""
    return long if LONG else ci


@dataclass(frozen=True)
class Timing:
    """Short worker timings so a scenario's recovery happens in seconds, not minutes.

    A worker is dead after 5 missed heartbeats; its supervisor reaps every heartbeat and
    renews leases every third of a lease.
    """

    lease: float = 2.0
    heartbeat: float = 0.3
    max_deliveries: int = 5

    @property
    def env(self) -> dict[str, str]:
        """The worker settings as CELERIAC_* environment variables."""
        return {
            "CELERIAC_WORKER_LEASE_SECONDS": str(self.lease),
            "CELERIAC_WORKER_HEARTBEAT_SECONDS": str(self.heartbeat),
            "CELERIAC_TASK_MAX_DELIVERIES": str(self.max_deliveries),
            "CELERIAC_WORKER_SEND_TASK_EVENTS": "false",
        }

    @property
    def quiet(self) -> float:
        """Longer than a lease plus a reaper pass (a dead worker's heartbeat expires sooner):
        after this, anything that would be delivered again has been."""
        return self.lease + self.heartbeat + 0.5


# -- the ledger --------------------------------------------------------------------------


@dataclass
class LedgerFile:
    """Reads the JSON-lines ledger."""

    path: Path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for raw in self.path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):  # a core-format line from another app
                out.append(json.loads(_last_record(raw)))
        return out

    def phase(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["phase"] == name]

    def count(self, name: str) -> Counter[str]:
        return Counter(line["id"] for line in self.phase(name))

    def records(self, name: str) -> int:
        """How many ``name`` records the ledger holds, repeats included, without parsing
        it: the file grows by ~70,000 lines a minute under load, and parsing it whole once
        per kill took up to 3 s a read, most of scenario 1's time."""
        if not self.path.exists():
            return 0
        return self.path.read_bytes().count(b'{"phase":"%s"' % name.encode())

    def write(self, lines: list[dict[str, Any]]) -> None:
        append(lines, str(self.path))


def _last_record(raw: bytes) -> bytes:
    """The whole record at the end of ``raw``, past a torn one in front of it.

    A process SIGKILLed inside its ``os.write`` can leave a record cut short where the
    write crossed a page (Linux stops a buffered write between pages for a fatal signal).
    The next process's record is then appended to the fragment's line; read as one, the
    intact record was dropped with it, and the oracle saw a commit with no "end".

    Example:
        >>> _last_record(b'{"phase":"start","id":"a","to{"phase":"end","id":"b"}')
        b'{"phase":"end","id":"b"}'
    """
    start = raw.rfind(b'{"phase":')
    return raw[start:] if start > 0 else raw


@dataclass
class Producer:
    """Sends tasks with ids the harness chose, logging ``sendcall`` and ``sendack``."""

    app: Celeriac
    ledger: LedgerFile

    def send(self, messages: Sequence[Message]) -> None:
        """Send in one broker call; raise what the broker raised (no ``sendack`` then)."""
        now = time.time()
        self.ledger.write([{"phase": "sendcall", "id": m.id, "t": now} for m in messages])
        self.app.publish_many(messages)
        now = time.time()
        self.ledger.write([{"phase": "sendack", "id": m.id, "t": now} for m in messages])

    def send_retrying(self, messages: Sequence[Message], attempts: int = 100) -> int:
        """Send, retrying the same ids after a broker error (idempotent enqueue makes that
        safe); return how many attempts failed."""
        for failed in range(attempts):
            try:
                self.send(messages)
            except BrokerError as exc:
                now = time.time()
                self.ledger.write(
                    [{"phase": "sendfail", "id": m.id, "t": now, "e": str(exc)} for m in messages]
                )
                time.sleep(0.05)
            else:
                return failed
        raise AssertionError(f"send failed {attempts} times in a row")

    def jobs(
        self, ids: Iterable[str], pause: float = 0.0, batch: int = 100, **options: Any
    ) -> list[str]:
        """Send ``job(pause)`` under each id, ``batch`` per broker call."""
        from tests.torture.app import job

        sent = list(ids)
        for lo in range(0, len(sent), batch):
            messages = [
                job.message((pause,), None, task_id=i, **options) for i in sent[lo : lo + batch]
            ]
            self.send(messages)
        return sent


# -- worker processes --------------------------------------------------------------------


class Workers(WorkerProcesses):
    """`celeriac worker` processes of the torture app, killed, stopped and continued by PID."""

    def __init__(self, broker_url: str, ledger: LedgerFile, timing: Timing) -> None:
        super().__init__(broker_url, CoreLedger(ledger.path))
        self.timing = timing

    def start(  # type: ignore[override]
        self,
        *args: str,
        app: str = APP,
        wait: bool = True,
        env: dict[str, str] | None = None,
        url: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a worker; ``url`` points it at another broker URL (e.g. through a proxy)."""
        environ = {
            **self.timing.env,
            LEDGER_ENV: str(self.ledger.path),
            **({"CELERIAC_BROKER_URL": url} if url else {}),
            **(env or {}),
        }
        # wait_ready probes the broker directly: it sees every worker, however connected.
        return super().start(*args, app=app, wait=wait, env=environ)

    def kill_child(self, pick: Any, among: Iterable[int] | None = None) -> int | None:
        """SIGKILL one child, chosen by ``pick`` (e.g. ``rng.choice``) among the PIDs
        ``among`` (default: the running children of every live worker; a worker still
        starting has none yet)."""
        children = self.running_children() if among is None else list(among)
        if not children:
            return None
        pid = int(pick(children))
        _signal(pid, signal.SIGKILL)
        return pid

    def running_children(self, procs: Iterable[subprocess.Popen[bytes]] | None = None) -> list[int]:
        """The running children of ``procs`` (default: every live worker)."""
        return list(self.child_ages(procs))

    def child_ages(
        self, procs: Iterable[subprocess.Popen[bytes]] | None = None
    ) -> dict[int, tuple[int, float]]:
        """PID -> (its worker's PID, its age in seconds) of every running child of ``procs``
        (default: every live worker). A child killed but not reaped yet is a zombie, not a
        running child: killing it again would kill nothing."""
        found = {}
        for proc in self.live() if procs is None else procs:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children():
                    with contextlib.suppress(psutil.Error, OSError, ValueError):
                        if child.status() != psutil.STATUS_ZOMBIE:
                            found[child.pid] = (proc.pid, _age(child.pid))
        return found

    def working(self) -> list[subprocess.Popen[bytes]]:
        """Live workers past start-up: each with at least one running child."""
        return [p for p in self.live() if self.running_children([p])]

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole worker by PID: the supervisor first (so it cannot respawn a
        child in between), then every child it had."""
        if proc.poll() is None:
            children = self.children(proc)
            _signal(proc.pid, signal.SIGKILL)
            for pid in children:
                _signal(pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def signal_all(self, proc: subprocess.Popen[bytes], signum: int) -> None:
        """Send ``signum`` to the supervisor and its children (SIGSTOP/SIGCONT)."""
        pids = [proc.pid, *self.children(proc)]
        for pid in pids:
            _signal(pid, signum)

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.started if p.poll() is None]

    def kill_all(self) -> None:
        for proc in self.started:
            with contextlib.suppress(psutil.Error):
                self.signal_all(proc, signal.SIGCONT)  # a stopped process cannot die cleanly
        super().kill_all()


def _age(pid: int) -> float:
    """Seconds since ``pid`` started, to the clock tick. Not psutil's create_time: it adds
    the boot time in whole seconds, so an age from it can be up to a second too high."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    started = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


# -- the oracle --------------------------------------------------------------------------


@dataclass
class Terminal:
    """A terminal state read back from celeriac."""

    state: str  # SUCCESS, FAILURE, EXPIRED, REVOKED, or DEAD (a dead letter)
    token: str | None = None  # the committed execution's token, when the result has one
    reason: str = ""


@dataclass
class Report:
    """What the oracle found."""

    sent: set[str]
    acked: set[str]
    terminal: dict[str, Terminal]
    executions: Counter[str]
    commits: dict[str, list[str]]
    lost: list[str] = field(default_factory=list)
    double_commits: dict[str, list[str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    foreign_tokens: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> dict[int, int]:
        """Histogram: executions per id -> how many ids ran that many times."""
        return dict(sorted(Counter(self.executions.values()).items()))

    @property
    def extra_executions(self) -> int:
        """Executions beyond the first, over every id."""
        return sum(n - 1 for n in self.executions.values() if n > 1)

    def states(self) -> Counter[str]:
        return Counter(t.state for t in self.terminal.values())

    def summary(self) -> str:
        return (
            f"sent={len(self.sent)} acked={len(self.acked)} terminal={dict(self.states())} "
            f"lost={len(self.lost)} double_commits={len(self.double_commits)} "
            f"unexpected={len(self.unexpected)} duplicates={self.duplicates}"
        )

    def assert_safe(self, *, max_lost: int = 0) -> None:
        """The invariants every scenario keeps: at most one commit per id, nothing
        unexpected, and (unless the scenario states a bound) nothing lost."""
        assert not self.double_commits, f"DOUBLE COMMIT: {self.double_commits}"
        assert not self.foreign_tokens, (
            f"stored result of no logged execution: {self.foreign_tokens}"
        )
        assert not self.unexpected, f"terminal state for ids never sent: {self.unexpected[:10]}"
        assert len(self.lost) <= max_lost, f"LOST {len(self.lost)}: {self.lost[:10]}"


class Oracle:
    """Reads terminal states back from celeriac and judges them against the ledger."""

    def __init__(self, app: Celeriac, ledger: LedgerFile, timing: Timing) -> None:
        self.app = app
        self.ledger = ledger
        self.timing = timing

    def terminal(self, ids: Iterable[str]) -> dict[str, Terminal]:
        """Terminal states of ``ids`` (absent: none yet)."""
        broker = self.app.broker
        dead = {d.id: d for d in self.dead_letters()}
        found: dict[str, Terminal] = {}
        for task_id in ids:
            if task_id in dead:
                found[task_id] = Terminal("DEAD", None, dead[task_id].reason)
                continue
            got = broker.get_result(task_id)
            if got is None or not got[1]:
                continue
            record = decode_result(got[0])
            value = record.result if isinstance(record.result, dict) else {}
            reason = record.error.message if record.error else ""
            found[task_id] = Terminal(record.state, value.get("token"), reason)
        return found

    def dead_letters(self) -> list[DeadLetter]:
        return self.app.broker.dead_letters(limit=1_000_000)

    def wait(self, ids: Iterable[str] | None = None, timeout: float = 60.0) -> set[str]:
        """Wait until every id (default: every acknowledged one) is terminal; return the
        ids still pending at the timeout. Bounded in time; polls only what is pending."""
        pending = set(self.acked() if ids is None else ids)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            with contextlib.suppress(BrokerError):
                pending -= set(self.terminal(pending))
            if pending:
                time.sleep(0.2)
        return pending

    def acked(self) -> set[str]:
        return {line["id"] for line in self.ledger.phase("sendack")}

    def report(self, *, quiet: bool = True, timeout: float = 60.0) -> Report:
        """Wait for every acknowledged id, stay quiet (see module docstring), then judge."""
        self.wait(timeout=timeout)
        if quiet:
            time.sleep(self.timing.quiet)
        lines = self.ledger.lines()
        sent = {x["id"] for x in lines if x["phase"] == "sendcall"}
        acked = {x["id"] for x in lines if x["phase"] == "sendack"}
        executions = Counter(x["id"] for x in lines if x["phase"] == "start")
        commits: dict[str, list[str]] = {}
        for x in lines:
            if x["phase"] == "commit":
                commits.setdefault(x["id"], []).append(x["token"])
        ended = {x["token"] for x in lines if x["phase"] == "end"}
        terminal = self.terminal(sent)
        report = Report(sent, acked, terminal, executions, commits)
        report.lost = sorted(acked - set(terminal))
        for task_id in sent:
            tokens = commits.get(task_id, [])
            stored = terminal.get(task_id)
            distinct = set(tokens) | ({stored.token} if stored and stored.token else set())
            if len(tokens) > 1 or len(distinct) > 1:
                report.double_commits[task_id] = [*tokens, f"stored={stored}"]
            if stored and stored.token and stored.token not in ended:
                report.foreign_tokens.append(task_id)
        foreign = set(executions) | {d.id for d in self.dead_letters()}
        foreign |= stored_result_ids(self.app.conf.broker_url)
        report.unexpected = sorted(foreign - sent)
        return report


def stored_result_ids(url: str) -> set[str]:
    """Every task id with a final result in the broker (to find results nobody sent)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "sqlite":
        path = url.split("sqlite:///", 1)[1].split("?", 1)[0]
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            return {row[0] for row in db.execute("SELECT id FROM results WHERE final = 1")}
    prefix = dict(urllib.parse.parse_qsl(parts.query)).get("prefix", "celeriac")
    client = redis.Redis(host=parts.hostname, port=parts.port)
    try:
        found = set()
        for key in client.scan_iter(match=f"{prefix}:r:{{*", count=1000):
            if client.getrange(key, 0, 0) == b"F":
                found.add(key.decode()[len(prefix) + 4 : -1])
        return found
    finally:
        client.close()


def summary_line(name: str, report: Report, **numbers: Any) -> str:
    """One line of measured numbers; printed, and appended to $TORTURE_REPORT if set."""
    extra = " ".join(f"{k}={v}" for k, v in numbers.items())
    line = f"[torture] {name}: {report.summary()} {extra}".rstrip()
    print(line)
    out = os.environ.get("TORTURE_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    return line


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Any]:
    """A bounded loop's clock: ``with deadline(30) as left: while left() > 0: ...``."""
    end = time.monotonic() + seconds
    yield lambda: end - time.monotonic()
