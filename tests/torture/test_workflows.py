"""Scenarios 14 and 15: a chord under kills, and schedulers killed while they tick."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from celeriac.canvas import chord
from celeriac.testing import wait_for
from tests.conftest import ROOT
from tests.conftest import Ledger as CoreLedger
from tests.torture.conftest import Rig
from tests.torture.harness import LONG, deadline, scaled, summary_line

pytestmark = [pytest.mark.slow, pytest.mark.torture, pytest.mark.timeout(1800 if LONG else 120)]


def test_14_a_chord_under_kills_calls_back_exactly_once(redis_rig: Rig) -> None:
    """Scenario 14: a chord of 200 members (1,000 with --long) while children are
    SIGKILLed at random and one whole worker is killed, as in scenario 1.

    Proves: members that die are delivered again and join once (the join counts distinct
    members), so the callback runs exactly once, with every member's value in order;
    nothing lost, never two commits.
    """
    from tests.torture.app import member, total

    rig = redis_rig
    rng = random.Random(14)
    members = scaled(200, 1000)
    for _ in range(2):
        rig.workers.start("-c", "2", wait=False)
    for proc in rig.workers.started:
        rig.workers.wait_ready(proc)
    flow = chord([member.s(i, 0.05) for i in range(members)], total.s())
    result = flow.apply_async()
    ids = [result.id, *(f"{result.id}:h:{i}" for i in range(members))]
    now = time.time()
    rig.ledger.write(
        [{"phase": p, "id": i, "t": now} for i in ids for p in ("sendcall", "sendack")]
    )
    wanted, worker_wanted = scaled(6, 30), scaled(1, 5)
    plan = ["child"] * wanted + ["worker"] * worker_wanted
    rng.shuffle(plan)
    child_kills = worker_kills = 0
    with deadline(scaled(60, 600)) as left:
        for kind in plan:
            # Kill while most of the header is still to run: the callback itself is never
            # killed, so a second callback execution could only come from a double join.
            time.sleep(rng.uniform(0.03, 0.12))
            if left() <= 0 or len(rig.ledger.count("start")) >= members * 0.8:
                break
            if kind == "worker":
                rig.workers.kill_worker(rng.choice(rig.workers.live()))
                rig.workers.start("-c", "2", wait=False)
                worker_kills += 1
            elif rig.workers.kill_child(rng.choice):
                child_kills += 1
    value = result.get(timeout=scaled(60, 600))
    report = rig.oracle.report(timeout=30)
    callbacks = [x for x in rig.ledger.phase("start") if x.get("callback")]
    summary_line(
        "14 chord",
        report,
        members=members,
        child_kills=child_kills,
        worker_kills=worker_kills,
        callback_runs=len(callbacks),
    )
    report.assert_safe()
    assert child_kills + worker_kills >= 0.8 * len(plan), "the header ended before the kills"
    assert value["count"] == members
    assert value["sum"] == sum(i * i for i in range(members))
    assert len(callbacks) == 1 and report.executions[result.id] == 1
    assert report.extra_executions <= child_kills + 2 * worker_kills, report.duplicates
    assert report.states() == {"SUCCESS": members + 1}


class Schedulers:
    """`celeriac beat` processes of tests.apps.periodic, each killed by PID at the end."""

    def __init__(self, url: str, ledger_path: str, folder: str) -> None:
        self.url, self.ledger_path, self.folder = url, ledger_path, folder
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CELERIAC_BROKER_URL": self.url,
            "CELERIAC_TEST_LEDGER": self.ledger_path,
            "PYTHONPATH": str(ROOT),
        }
        log = f"{self.folder}/beat-{len(self.started)}.log"
        with open(log, "wb") as output:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", "tests.apps.periodic", "beat"],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        return proc

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.started if p.poll() is None]

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_15_three_schedulers_one_killed_periodically_one_run_per_tick(
    redis_rig: Rig,
) -> None:
    """Scenario 15: three schedulers of a one-second entry; every 2 s (every 10 s with
    --long, for a minute) one of them, chosen at random, is SIGKILLed and replaced.

    Proves: every tick in the window runs exactly once — none twice (the claim and the
    deterministic id), none missing (a survivor takes over a tick whose claimer died).
    The task ignores its result, so the broker's idempotent enqueue cannot hide a second
    send: only the schedulers' claim keeps each tick to one run.
    """
    rig = redis_rig
    rng = random.Random(15)
    duration, every = (60.0, 10.0) if LONG else (8.0, 2.0)
    rig.workers.start("-c", "2", app="tests.apps.periodic")
    beats = Schedulers(rig.url, str(rig.ledger.path), str(rig.folder))
    ticks = CoreLedger(rig.ledger.path)

    def runs() -> list[float]:
        return [float(p[4].split(" ")[1]) for p in ticks.lines() if p[0] == "tick"]

    try:
        for _ in range(3):
            beats.start()
        assert wait_for(lambda: len(runs()) >= 2, timeout=20), rig.workers.log_text()
        begin = time.time()
        kills = 0
        while time.time() - begin < duration:
            time.sleep(every)
            victim = rng.choice(beats.live())
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            beats.start()
            kills += 1
        end = time.time()
        assert wait_for(lambda: max(runs()) >= int(end), timeout=10)
    finally:
        beats.kill_all()
    counted = Counter(runs())
    window = [float(t) for t in range(int(begin) + 1, int(end))]
    missing = [t for t in window if counted[t] == 0]
    twice = {t: n for t, n in counted.items() if n > 1}
    print(
        f"[torture] 15 schedulers: kills={kills} ticks_in_window={len(window)} "
        f"missing={len(missing)} twice={len(twice)}"
    )
    assert kills >= 3
    assert not twice, f"a tick ran twice: {twice}"
    assert not missing, f"ticks that never ran: {missing}"
