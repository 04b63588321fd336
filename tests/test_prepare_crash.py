"""A message that crashes a worker child before its task starts: while it is read.

Reading a message (``Executor.prepare``) runs before the child's slot names the task as
started. An exception there killed the child, and the message was put back to kill the
next one, for ever; a message whose decoding kills the process (a segfault) was counted at
every death but read again each time, so ``task_max_deliveries`` never applied to it.
Real worker processes, on a real SQLite file and a real redis-server.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import re
import subprocess
import uuid
from pathlib import Path

import pytest

import celeriac
from celeriac import Celeriac
from celeriac.brokers.records import DeadLetter, Outgoing
from celeriac.message import Message
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import ROOT, Ledger, WorkerProcesses

# The workers import the celeriac this test imported (the tree under test).
PYTHONPATH = os.pathsep.join([str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)])


class _Segfault:
    """Unpickled, it reads address 0 in C: the process dies of SIGSEGV, as a C
    extension that crashes while a message is decoded would make it."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (ctypes.string_at, (0,))


def _start(workers: WorkerProcesses, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return workers.start("-c", "1", *args, env={"PYTHONPATH": PYTHONPATH, **env})


def _letter(app: Celeriac, task_id: str) -> DeadLetter | None:
    return next((d for d in app.broker.dead_letters() if d.id == task_id), None)


def _deaths(workers: WorkerProcesses) -> list[str]:
    return re.findall(r"worker child \d+ died \([^)]*\) while [^;]*", workers.log_text())


def test_a_message_that_raises_while_read_is_dead_lettered_and_the_child_lives(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    """A newer-protocol message whose ``sent_at`` no float can hold made the decoder raise
    OverflowError (not MalformedMessage): the child died at every delivery, and the
    message was never dead-lettered (measured: 7 deaths in 12 s, on both brokers)."""
    bad = f"bad-{uuid.uuid4().hex[:8]}"
    body = (
        b'{"id":"'
        + bad.encode()
        + b'","task":"tests.apps.core.add","v":2,"sent_at":1'
        + b"0" * 400
        + b"}"
    )
    core_app.broker.send([Outgoing(bad, "default", body)])
    good = core.add.delay(2, 3)
    proc = _start(workers)
    child = workers.wait_children(proc, 1)
    assert good.get(timeout=30) == 5, workers.log_text()
    assert wait_for(lambda: _letter(core_app, bad) is not None, timeout=30), workers.log_text()
    letter = _letter(core_app, bad)
    assert letter is not None
    assert "reading it raised OverflowError" in letter.reason
    assert letter.error.startswith("builtins.OverflowError: int too large to convert to float")
    assert letter.deliveries == 1 and letter.task == "tests.apps.core.add"
    assert workers.children(proc) == child, "the child died: " + workers.log_text()
    assert not _deaths(workers)
    # The caller's handle says what happened, too.
    with pytest.raises(Exception, match="dead-lettered: malformed message: reading it raised"):
        core_app.AsyncResult(bad).get(timeout=5)


@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_a_message_that_kills_every_child_reading_it_is_dead_lettered(
    core_app: Celeriac, workers: WorkerProcesses, pool: str
) -> None:
    """A message whose decoding segfaults: counted at each death, and dead-lettered
    unread once a delivery past task_max_deliveries died reading it too."""
    bad = f"segv-{uuid.uuid4().hex[:8]}"
    core_app.broker.send([Outgoing(bad, "default", pickle.dumps(_Segfault()))])
    proc = _start(
        workers,
        "-P",
        pool,
        CELERIAC_ACCEPT_CONTENT="json,pickle",
        CELERIAC_TASK_MAX_DELIVERIES="2",
    )
    assert wait_for(lambda: _letter(core_app, bad) is not None, timeout=60), workers.log_text()
    letter = _letter(core_app, bad)
    assert letter is not None
    # The first delivery over the limit is still read (the ordinary dead letter knows the
    # task and fails its workflow); only when that reading dies too is it refused unread.
    assert letter.deliveries == 4, letter
    assert "task_max_deliveries=2" in letter.reason and "not decoded" in letter.reason
    deaths = _deaths(workers)
    assert len(deaths) == 3, workers.log_text()  # the limit and one more, not for ever
    assert all("SIGSEGV" in d and f"reading message {bad}" in d for d in deaths), deaths
    # And the worker serves on.
    assert core.add.delay(1, 1).get(timeout=30) == 2, workers.log_text()
    assert proc.poll() is None


def test_messages_prefetched_with_a_killer_go_back_uncounted(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    """The child that dies reading a message also held others it had not taken yet: they
    go back uncounted, run once each as their first delivery, and are never dead-lettered
    for deaths they did not cause."""
    bad = f"segv-{uuid.uuid4().hex[:8]}"
    innocent = [f"ok-{i}-{uuid.uuid4().hex[:8]}" for i in range(2)]
    codec = core_app.codec
    bodies = [
        codec.encode(Message(id=i, task="tests.apps.core.slow_first_time", args=[0]))
        for i in innocent
    ]
    # One send: a fresh child fetches all three at once (prefetch 3), the killer first.
    core_app.broker.send(
        [
            Outgoing(bad, "default", pickle.dumps(_Segfault())),
            *(Outgoing(i, "default", b) for i, b in zip(innocent, bodies, strict=True)),
        ]
    )
    _start(
        workers,
        CELERIAC_ACCEPT_CONTENT="json,pickle",
        CELERIAC_TASK_MAX_DELIVERIES="2",
        CELERIAC_WORKER_PREFETCH_MULTIPLIER="3",
    )
    assert wait_for(lambda: _letter(core_app, bad) is not None, timeout=60), workers.log_text()
    assert wait_for(lambda: all(i in ledger.count("start") for i in innocent), timeout=30), (
        workers.log_text()
    )
    letters = {d.id for d in core_app.broker.dead_letters()}
    assert letters == {bad}, workers.log_text()
    runs = [line for line in ledger.lines() if line[0] == "start"]
    # Each ran as its first delivery: the deaths of the children that held it prefetched
    # were not counted against it.
    assert sorted((line[1], line[4]) for line in runs) == sorted((i, "1") for i in innocent)
    assert len(_deaths(workers)) == 3, workers.log_text()
