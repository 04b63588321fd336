"""A producer app used before a fork (gunicorn --preload, multiprocessing, a daemon's
double fork) keeps working in the children, on SQLite and Redis: nothing sent by a child
is lost, and no reply reaches another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import celeriac
from celeriac.brokers.sqlite import SQLiteBroker
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` as a process of its own (a test must not fork pytest), on this tree."""
    src = str(Path(celeriac.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(ROOT)])}
    env.pop("CELERIAC_BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# The parent opens the file and forks; it lets go of the file (it exits, or its thread
# that had the connection ends) while its child goes on sending. Another process opens
# the file and closes it again (a `celeriac status`, a short script), then the child sends
# once more.
_SEND_AFTER_PARENT_LEFT = """
import os, signal, subprocess, sys, threading
from celeriac import Celeriac

url = sys.argv[1]
app = Celeriac("web", broker=url)

@app.task
def notify(n: int) -> int:
    return n

notify.apply_async((0,), task_id="from-parent")
if sys.argv[2] == "thread":  # an idle thread of a threaded server has its own connection
    sent, request_done = threading.Event(), threading.Event()
    def request():
        notify.apply_async((3,), task_id="from-parent-thread")
        sent.set()
        request_done.wait(60)
    server_thread = threading.Thread(target=request)
    server_thread.start()
    sent.wait(60)
parent_left, tell_child = os.pipe()
child = os.fork()
if child == 0:
    signal.alarm(60)  # never outlive the test
    os.close(tell_child)
    os.read(parent_left, 1)
    notify.apply_async((1,), task_id="from-child-1")
    passer_by = f"from celeriac import Celeriac; Celeriac('x', broker={url!r}).broker.close()"
    subprocess.run([sys.executable, "-c", passer_by], check=True, timeout=60)
    notify.apply_async((2,), task_id="from-child-2")
    os._exit(0)
if sys.argv[2] == "thread":
    request_done.set()
    server_thread.join(60)
app.broker.close()
os.close(tell_child)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("parent", ["main", "thread"])
def test_tasks_a_forked_child_sends_after_its_parent_let_go_of_the_file_are_kept(
    tmp_path: Path, parent: str
) -> None:
    # SQLite keeps its file locks per process, in a table the child inherits: the child's
    # own connection found the parent's lock counted there and took no lock of its own.
    # Once the parent closed, the next process to close the file found no one else on it,
    # checkpointed and deleted the -wal and -shm files, and the child went on committing
    # into the deleted log: from-child-2 reached no worker, ever.
    url = f"sqlite:///{tmp_path}/broker.db"
    done = _run(_SEND_AFTER_PARENT_LEFT, url, parent)
    assert done.returncode == 0, done.stderr
    broker = SQLiteBroker(url)
    try:
        taken = broker.fetch(["default"], "reader", limit=10, lease_seconds=60, timeout=0)
        sent = ["from-child-1", "from-child-2", "from-parent"]
        sent += ["from-parent-thread"] if parent == "thread" else []
        assert sorted(d.id for d in taken) == sent
    finally:
        broker.close()


# Request threads of a threaded web server send and wait while the app closes the broker
# (a shutdown hook, a test's teardown), again and again.
_CLOSE_WHILE_THREADS_SEND = """
import sys, threading, time
from celeriac import Celeriac

app = Celeriac("web", broker=sys.argv[1])

@app.task
def notify(n: int) -> int:
    return n

stop = threading.Event()
sent, errors = [], []

def requests(thread: int) -> None:
    n = 0
    while not stop.is_set():
        try:
            result = notify.apply_async((n,), task_id=f"t{thread}-{n}")
            sent.append(result.id)
            if n % 4 == 0:  # some requests wait for their result (no worker: time out)
                try:
                    result.get(timeout=0.02)
                except TimeoutError:
                    pass
        except Exception as exc:
            errors.append(repr(exc))
        n += 1

threads = [threading.Thread(target=requests, args=(i,)) for i in range(4)]
for thread in threads:
    thread.start()
for _ in range(20):
    time.sleep(0.01)
    app.broker.close()
stop.set()
for thread in threads:
    thread.join(60)
stored = {row[0] for row in app.broker._read("SELECT id FROM messages")}
print(len(sent), len(set(sent) - stored), errors[:3])
"""


def test_closing_the_broker_while_threads_send_crashes_nothing_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # close() closed every thread's connection at once, also under a statement another
    # thread was running: CPython's sqlite3 died of it (a segmentation fault, the whole
    # web process gone). It now waits for each statement in flight; the threads open new
    # connections and go on. A wait between two looks at the file failed with
    # AttributeError ('_thread._local' object has no attribute 'version'): close()
    # replaced every thread's local state under it.
    done = _run(_CLOSE_WHILE_THREADS_SEND, f"sqlite:///{tmp_path}/broker.db")
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr[-2000:]}"
    sent, missing, errors = done.stdout.split(" ", 2)
    assert int(sent) > 0
    assert (int(missing), errors.strip()) == (0, "[]")


# A thread of the parent is between two statements of its connection (inside a
# transaction, say) when the main thread forks; the child sends a task and exits.
_FORK_WHILE_A_THREAD_USES_ITS_CONNECTION = """
import os, signal, sys, threading, time
from celeriac import Celeriac

app = Celeriac("web", broker=sys.argv[1])

@app.task
def notify(n: int) -> int:
    return n

inside, leave = threading.Event(), threading.Event()

def request() -> None:
    with app.broker._using():
        inside.set()
        leave.wait(60)

thread = threading.Thread(target=request)
thread.start()
inside.wait(60)
child = os.fork()
if child == 0:
    notify.apply_async((1,), task_id="from-child")
    os._exit(0)
deadline = time.monotonic() + 30
while time.monotonic() < deadline and os.waitpid(child, os.WNOHANG) == (0, 0):
    time.sleep(0.05)
else:
    if time.monotonic() >= deadline:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        print("child hung")
leave.set()
thread.join(60)
"""


def test_a_child_forked_while_a_thread_uses_its_connection_starts_and_sends(
    tmp_path: Path,
) -> None:
    # CPython drops the parent's other threads in the child before the fork hooks run,
    # while the cached process id still reads the parent's: that thread's connection was
    # closed in the child as if it were the parent, under the lock its thread held there
    # (the child hung for good), or, without that lock, rolled back under the parent.
    url = f"sqlite:///{tmp_path}/broker.db"
    done = _run(_FORK_WHILE_A_THREAD_USES_ITS_CONNECTION, url)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr[-2000:]
    broker = SQLiteBroker(url)
    try:
        assert broker.get_results(["from-child"]) == [None]  # not run, but queued:
        (stats,) = broker.stats()
        assert stats.ready == 1
    finally:
        broker.close()
