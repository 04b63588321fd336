"""Instructions per consumed no-op, counted by valgrind's callgrind: the consume loop's cost
in a number the machine's noise does not move (the same code counts the same within
~0.5% from run to run), for comparing two versions of the code side by side where a
timed drain moves by more than the change.

    python -m benchmarks.instructions                    # this work tree's src/
    python -m benchmarks.instructions /tmp/old/src src   # two trees, one after the other

(An older tree: ``git archive REV src | tar -x -C /tmp/old``.) One private redis-server.
For each tree, ``SMALL`` and then ``LARGE`` no-ops are queued by a plain process, then
consumed by one process-pool child's loop (:func:`benchmarks.profile_celeriac.consume`, the
real ``Child``) under callgrind; ``(I(LARGE) - I(SMALL)) / (LARGE - SMALL)`` leaves the
interpreter's start and the imports out. The batch window is widened to 0.25 s: valgrind
runs the code ~50x slower, and a child sizes its batches by time, so without it batches
would be a few tasks instead of the 32 they are at full speed. Instructions are not time
(a cache miss costs more than an add), but a change that removes instructions from the
loop removes time with them. Needs valgrind (Debian's ``valgrind`` package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import redis
from benchmarks.redis_server import redis_server

ROOT = Path(__file__).resolve().parent.parent
SMALL, LARGE = 1_000, 4_000

_QUEUE = """
import sys
from benchmarks.profile_celeriac import make_app
app, noop = make_app(sys.argv[1])
n = int(sys.argv[2])
for start in range(0, n, 1000):
    app.publish_many([noop.message((i,)) for i in range(start, min(n, start + 1000))])
"""
_CONSUME = """
import sys
from benchmarks.profile_celeriac import consume, make_app
app, _ = make_app(sys.argv[1])
print("consumed", consume(app), file=sys.stderr)
"""


def instructions(src: Path, url: str, tasks: int) -> int:
    """Instructions callgrind counts in a process that consumes ``tasks`` queued no-ops with
    the celeriac in ``src``."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}{os.pathsep}{ROOT}",
        "CELERIAC_WORKER_BATCH_WINDOW": "0.25",
    }
    redis.Redis.from_url(url).flushdb()
    python = sys.executable
    subprocess.run([python, "-c", _QUEUE, url, str(tasks)], env=env, check=True)
    callgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    counted = subprocess.run(
        [*callgrind, python, "-c", _CONSUME, url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", counted.stderr)
    if counted.returncode != 0 or found is None or f"consumed {tasks}" not in counted.stderr:
        raise SystemExit(f"callgrind run failed for {src}:\n{counted.stderr[-2000:]}")
    return int(found.group(1))


def per_task(src: Path, url: str) -> float:
    """Instructions per consumed no-op with the celeriac in ``src``."""
    small = instructions(src, url, SMALL)
    large = instructions(src, url, LARGE)
    return (large - small) / (LARGE - SMALL)


def main(argv: list[str] | None = None) -> int:
    """Print instructions per consumed no-op for each source tree given (default: src/).

    Example: python -m benchmarks.instructions /tmp/old/src src
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT / "src"])
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 1
    missing = [str(t) for t in args.trees if not (t / "celeriac").is_dir()]
    if missing:
        print(f"not a src/ folder holding celeriac: {', '.join(missing)}", file=sys.stderr)
        return 2
    with redis_server() as url:
        print(f"instructions per consumed no-op (callgrind; {LARGE} - {SMALL} tasks, one child)")
        for tree in args.trees:
            print(f"  {per_task(tree.resolve(), url):>10,.0f}  {tree}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
