"""A real cgroup v1 group of a test's own, under this process's own (so whatever limits
this process limits it too); tests that cannot make one skip, naming the path tried."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.testing import wait_for


def own_v1_dir(controller: str) -> Path | None:
    """This process's cgroup v1 directory of ``controller``, found without the modules
    under test: /proc/self/cgroup's line under the mount /proc/self/mounts lists for it."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    points = [m[1] for m in mounts if m[2] == "cgroup" and controller in m[3].split(",")]
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") and points:
            return Path(points[0] + path)
    return None


@contextlib.contextmanager
def fresh_v1_group(controller: str, limits: dict[str, str]) -> Iterator[Path]:
    """A new cgroup v1 ``controller`` group with ``limits`` (file name: value) written;
    its processes are killed and it is removed at the end."""
    own = own_v1_dir(controller)
    if own is None:
        pytest.skip(f"no cgroup v1 {controller} hierarchy in /proc/self/cgroup and mounts")
    group = own / f"celeriac-test-{os.urandom(4).hex()}"
    try:
        group.mkdir()
        for name, value in limits.items():
            (group / name).write_text(value)
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        pytest.skip(f"cannot make a cgroup v1 {controller} group at {group}: {exc}")
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), timeout=10)
        group.rmdir()
