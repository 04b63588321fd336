"""Hard time limits are enforced while the supervisor's broker calls hang.

The supervisor enforced them in its main pass, between its broker calls: a broker that
hangs instead of refusing (Redis frozen or failing over, a lost network) held every hard
limit back for a socket timeout per call (30 s by default). Real worker processes on a
private redis-server, frozen with SIGSTOP while a task runs past its hard limit.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_hard_limit_is_enforced_while_the_broker_is_frozen(
    private_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket timeout far longer than the wait below: a supervisor that enforces limits
    # only between its broker calls cannot pass, however slow the machine.
    url = f"{private_redis.url}?socket_timeout=300"
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(core.app.conf, "broker_url", url)
    workers = WorkerProcesses(url, ledger)
    frozen = False
    try:
        proc = workers.start("-c", "1")
        (child,) = workers.wait_children(proc, 1)
        result = core.work.apply_async((60, "over"), soft_time_limit=50, time_limit=1)
        assert wait_for(lambda: ledger.count("start")[result.id] == 1, timeout=20)
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        frozen = True
        # The supervisor's next heartbeat or renewal now waits for a reply that does not
        # come; the task's hard limit must end it all the same.
        assert wait_for(lambda: _gone(child), timeout=30), workers.log_text()
        os.kill(private_redis.process.pid, signal.SIGCONT)
        frozen = False
        with pytest.raises(Exception, match="hard time limit"):
            result.get(timeout=30)
        assert f"work[{result.id}] passed its hard time limit" in workers.log_text()
    finally:
        if frozen:
            os.kill(private_redis.process.pid, signal.SIGCONT)
        workers.kill_all()
        core.app.broker.close()
