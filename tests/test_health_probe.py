"""A container's health check asks its own worker: ``celeriac ping -w "$(hostname)"``.

``ping`` alone exits 0 when any worker answers, so in a pod it checked the other pods'
workers; ``-w`` named one worker by its id, which ends in a pid and a random part that a
probe cannot know. ``-w`` also takes a host name: every live worker on that host must
answer. A real worker answers; a heartbeat written here for a worker on another host,
which nothing answers for, stands for a stuck worker there.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import msgspec
import pytest
from click.testing import CliRunner, Result

from celeriac import Celeriac
from celeriac.brokers.records import WorkerInfo
from celeriac.cli import cli
from celeriac.control import CONTROL, Command, ask_each, live_workers
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import WorkerProcesses

pytestmark = pytest.mark.slow


def _ping(broker_url: str, *args: str, timeout: float = 5) -> Result:
    """``celeriac ping``: ``timeout`` is how long a silent worker makes it wait."""
    return CliRunner().invoke(cli, ["-b", broker_url, "ping", "--timeout", str(timeout), *args])


def _status(broker_url: str) -> str:
    """What ``celeriac status`` prints (wide, so that nothing is folded)."""
    return CliRunner().invoke(cli, ["-b", broker_url, "status"], env={"COLUMNS": "400"}).output


def test_ping_w_host_asks_the_workers_of_that_host_and_fails_when_one_is_silent(
    core_app: Celeriac, workers: WorkerProcesses, broker_url: str
) -> None:
    workers.start("-c", "1")
    (real,) = [w.id for w in live_workers(core_app)]
    stuck = WorkerInfo("elsewhere:7:abc123", "elsewhere", 7, ("default",), 1, time.time())
    core_app.broker.heartbeat(stuck, 600)

    here = _ping(broker_url, "-w", socket.gethostname())
    assert here.exit_code == 0 and here.output == f"{real}: pong\n", here.output
    assert _ping(broker_url, "-w", real).output == f"{real}: pong\n"
    there = _ping(broker_url, "-w", "elsewhere", timeout=0.5)
    assert there.exit_code == 1, there.output
    assert "no answer within 0.5s from elsewhere:7:abc123" in there.output
    unknown = _ping(broker_url, "-w", "no-such-host")
    assert unknown.exit_code == 1
    assert "no live worker has the id or host 'no-such-host'" in unknown.output
    assert _ping(broker_url, timeout=1).exit_code == 0  # without -w: any worker's answer will do


def test_ping_w_asks_every_worker_of_a_host_at_once_not_one_after_another(
    core_app: Celeriac, broker_url: str
) -> None:
    # Three stuck workers on one host: each was asked only after the one before had been
    # waited for, so the probe took three timeouts (a Kubernetes probe's timeoutSeconds
    # then failed it for slowness, whatever the workers said). The commands now go out
    # together: they carry one send time.
    stuck = [f"elsewhere:{pid}:abc123" for pid in (7, 8, 9)]
    for worker_id in stuck:
        info = WorkerInfo(worker_id, "elsewhere", 7, ("default",), 1, time.time())
        core_app.broker.heartbeat(info, 600)

    there = _ping(broker_url, "-w", "elsewhere", timeout=0.3)
    assert there.exit_code == 1, there.output
    for worker_id in stuck:
        assert worker_id in there.output, there.output
    sent = [
        msgspec.json.decode(raw, type=Command)
        for _, raw in core_app.broker.stream_read(CONTROL, 0, 100)
    ]
    pings = [c for c in sent if c.command == "ping" and c.target in stuck]
    assert sorted(c.target or "" for c in pings) == stuck
    assert len({c.at for c in pings}) == 1, [c.at for c in pings]


def test_ping_fails_for_a_worker_whose_children_keep_dying_and_passes_once_it_works_again(
    core_app: Celeriac, workers: WorkerProcesses, broker_url: str
) -> None:
    # The supervisor answers ping itself: a worker whose children died at every start (an
    # OOM-kill loop here: each new child is killed with -9) answered "pong" while it ran
    # nothing, and the orchestrator probing it never restarted it. It answers
    # "unhealthy: ..." now, and ping exits 1, until a task finishes again.
    proc = workers.start("-c", "1")
    host = socket.gethostname()
    assert _ping(broker_url, "-w", host).exit_code == 0
    killed: list[int] = []
    for _ in range(8):  # 5 deaths in a row make a crash loop; a few more for slow starts
        (pid,) = workers.wait_children(proc, 1)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        assert wait_for(lambda: workers.children(proc) not in ([], killed[-1:]), timeout=30)
        probe = _ping(broker_url, "-w", host)
        if probe.exit_code != 0:
            break
    assert probe.exit_code == 1, probe.output
    assert len(killed) >= 5  # fewer deaths in a row are no crash loop: it answered "pong"
    assert ": unhealthy: worker " in probe.output and "is crash-looping" in probe.output
    assert "killed by SIGKILL: the kernel's OOM killer" in probe.output
    assert f"child {killed[-1]}" in probe.output
    assert _ping(broker_url).exit_code == 1  # no healthy worker answers at all
    stats = CliRunner().invoke(
        cli, ["-b", broker_url, "inspect", "stats", "--timeout", "5", "--json"]
    )
    assert "is crash-looping" in stats.output
    assert wait_for(lambda: "is crash-looping" in _status(broker_url), timeout=30)  # heartbeat

    # The next child lives: once it finishes a task the worker is healthy again.
    assert core.add.delay(1, 2).get(timeout=30) == 3
    assert wait_for(lambda: _ping(broker_url, "-w", host).exit_code == 0, timeout=30)
    assert wait_for(lambda: "unhealthy" not in _status(broker_url), timeout=30)


def test_ask_each_refuses_what_no_worker_could_read() -> None:
    # Sent, a command whose target is not a string made every worker it names exit.
    app = Celeriac("probe", broker="memory://")
    with pytest.raises(TypeError, match="worker ids are strings"):
        ask_each(app, "ping", [42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="worker ids are strings"):
        ask_each(app, b"ping", ["web-1:42:9f86d0"])  # type: ignore[arg-type]
    assert app.broker.stream_read(CONTROL, 0, 10) == []  # nothing was sent
