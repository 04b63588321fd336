"""How many CPUs this worker may use: the default of ``worker_concurrency``.

``os.cpu_count()`` counts the host's CPUs. A container limited to 2 CPUs on a 64-CPU
node (Kubernetes ``limits.cpu: 2``, ``docker run --cpus 2``) or pinned to a few of them
(``--cpuset-cpus``, ``taskset``, Kubernetes' static CPU manager) started 64 children that
shared 2 CPUs, each holding its own memory: the memory ceiling fitted to the container
then fell below a fresh child's size, and every child was replaced after each task. What
binds the process is the smallest of:

1. the CPUs it may run on (``os.sched_getaffinity``, where the system has it);
2. its cgroup's CPU quota, rounded up: cgroup v2 ``cpu.max`` (``QUOTA PERIOD``, or ``max``)
   or cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none), of the process's
   cgroup and of each ancestor (the smallest wins);
3. the host's CPUs.

Example:
    >>> cpus = usable_cpus()
    >>> 1 <= cpus.count <= (os.cpu_count() or 1)
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celeriac.worker.cgroups import Mount, own_cgroups, read_small, up_the_tree


@dataclass(frozen=True, slots=True)
class CpuLimit:
    """A cgroup's CPU quota, in CPUs (1.5: one and a half), and the file it was read from.

    Example:
        >>> CpuLimit(1.5, "/sys/fs/cgroup/cpu.max").rounded
        2
    """

    cpus: float
    path: str

    @property
    def rounded(self) -> int:
        """Whole CPUs, rounded up: a quota of 1.5 CPUs keeps two children busy."""
        return max(1, math.ceil(self.cpus - 1e-9))


@dataclass(frozen=True, slots=True)
class Cpus:
    """The CPUs this process may use, and why, for the worker's start-up line."""

    count: int
    why: str  # "" when it is simply the host's count


def usable_cpus(proc: Path = Path("/proc")) -> Cpus:
    """The CPUs this process may use: the host's, its affinity's and its cgroup's quota,
    whichever is fewest (at least 1). ``proc`` is read as ``/proc`` (tests give their own).

    Example:
        >>> usable_cpus().count >= 1
        True
    """
    host = os.cpu_count() or 1
    best = Cpus(host, "")
    if hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))
        if 0 < allowed < best.count:
            best = Cpus(allowed, f"its CPU affinity allows {allowed} of the host's {host}")
    quota = cpu_limit(proc)
    if quota is not None and quota.rounded < best.count:
        best = Cpus(
            quota.rounded,
            f"the container's CPU limit is {quota.cpus:g} ({quota.path}) on a host with {host}",
        )
    return best


def cpu_limit(proc: Path = Path("/proc")) -> CpuLimit | None:
    """The smallest CPU quota of this process's cgroups (v2 first, then v1), or None."""
    groups, mounts = own_cgroups(proc)
    for mount in mounts:
        if mount.kind == "cgroup2" and "" in groups:
            found = _smallest(mount, groups[""], _v2_quota)
            if found is not None:
                return found
    for mount in mounts:
        if mount.kind == "cgroup" and "cpu" in mount.options and "cpu" in groups:
            found = _smallest(mount, groups["cpu"], _v1_quota)
            if found is not None:
                return found
    return None


def _smallest(mount: Mount, group: str, read: Callable[[Path], CpuLimit | None]) -> CpuLimit | None:
    """The smallest quota ``read`` finds from the process's cgroup up to the mount's top."""
    best: CpuLimit | None = None
    for here in up_the_tree(mount, group):
        found = read(here)
        if found is not None and (best is None or found.cpus < best.cpus):
            best = found
    return best


def _v2_quota(folder: Path) -> CpuLimit | None:
    """``cpu.max``: ``QUOTA PERIOD`` in microseconds, ``max PERIOD`` for no limit."""
    path = folder / "cpu.max"
    parts = read_small(path).split()
    if len(parts) != 2:
        return None
    return _quota(parts[0], parts[1], str(path))


def _v1_quota(folder: Path) -> CpuLimit | None:
    """``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    path = folder / "cpu.cfs_quota_us"
    quota = read_small(path).strip()
    return _quota(quota, read_small(folder / "cpu.cfs_period_us").strip(), str(path))


def _quota(quota: str, period: str, path: str) -> CpuLimit | None:
    if not (quota.isdigit() and period.isdigit()) or int(quota) <= 0 or int(period) <= 0:
        return None  # "max", -1, garbage or a missing file: no limit here
    return CpuLimit(int(quota) / int(period), path)
