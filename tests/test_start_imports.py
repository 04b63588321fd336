"""What a worker imports before its first task: every module there is start-up time.

A worker's start is part of every deploy's and autoscaler's drain (``docs/benchmarks.md``
measures the drain from worker start), and whatever the supervisor imports every forked
child carries in its memory too.
"""

from __future__ import annotations

import subprocess
import sys

#: The modules a process-, threads- or asyncio-pool worker on Redis loads to start.
_WORKER_START = (
    "celeriac.cli.main",
    "celeriac.cli.worker_cmd",
    "celeriac.worker.supervisor",
    "celeriac.worker.child",
    "celeriac.worker.threads",
    "celeriac.worker.aio",
    "celeriac.brokers.redis",
)


def test_a_worker_start_leaves_psutil_until_a_child_is_killed_or_ends() -> None:
    # psutil walks a child's process tree when it is killed or ends
    # (celeriac.worker.descendants) and nothing else: ~5 ms of the start, ~0.8 MiB a process.
    code = f"import sys, {', '.join(_WORKER_START)}; print('psutil' in sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert shown.stdout.strip() == "False", "a worker's start imports psutil again"
