"""How much memory this worker may use, and the RSS ceiling that fits its children in it.

A container's memory limit, not the host's RAM, is what the kernel's OOM killer enforces:
with ``-c 8`` in a 4 GiB container, eight children under a 1 GiB ceiling each are killed
(with their running tasks) long before any of them reaches it. :func:`memory_limit` finds
the limit that applies to this process:

1. cgroup v2: ``memory.max`` of the process's own cgroup and of each ancestor up to the
   cgroup2 mount (the smallest wins: a parent's limit binds its children too);
2. cgroup v1: ``memory.limit_in_bytes`` of the process's memory cgroup and its ancestors
   (a huge value, 2**63 less a page, means no limit);
3. the host's ``MemTotal`` (a cgroup limit above it binds nothing).

Where the cgroup files are is :mod:`celeriac.worker.cgroups`' business. Nothing here
raises: what cannot be read is skipped, and None means nothing was readable.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import msgspec

from celeriac.worker.cgroups import Mount, own_cgroups, read_small, up_the_tree

HEADROOM = 0.85  # of the limit, for the page cache, the kernel's own use and what we miss
DEFAULT_CEILING_MIB = 1024  # worker_max_memory_per_child's default: the most we fit
_UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as 2**63 less a page
_NAME = "worker_max_memory_per_child"
_INFO, _WARNING, _ERROR = logging.INFO, logging.WARNING, logging.ERROR


class MemoryLimit(msgspec.Struct, frozen=True):
    """The memory this process may use, and where that number comes from.

    Example:
        >>> MemoryLimit(2 << 30, "cgroup v1", "/sys/fs/cgroup/memory/job").owner
        'the container'
    """

    bytes: int
    source: str  # "cgroup v2", "cgroup v1" or "host"
    path: str  # the file or cgroup directory it was read from

    @property
    def owner(self) -> str:
        """Who sets the limit, for a person: "the container" or "the host"."""
        return "the host" if self.source == "host" else "the container"


def memory_limit(proc: Path = Path("/proc")) -> MemoryLimit | None:
    """The smallest memory limit that applies to this process, or None if none is readable.

    ``proc`` is where ``self/cgroup``, ``self/mountinfo`` and ``meminfo`` are read (tests
    point it at files of their own); the cgroup files are read where the mounts say.
    """
    host = _mem_total(read_small(proc / "meminfo"))
    groups, mounts = own_cgroups(proc)
    found = _cgroup_limit(groups, mounts)
    if found is not None and (host is None or found.bytes < host):
        return found
    if host is not None:
        return MemoryLimit(host, "host", str(proc / "meminfo"))
    return None


def fitted_ceiling(limit: int, supervisor_rss: int, children: int) -> int:
    """The RSS ceiling in MiB that lets ``children`` children and the supervisor all
    grow to it within ``HEADROOM`` of ``limit`` bytes, at most the default 1024 MiB and
    at least 1 MiB (0 would mean "no ceiling").

    Example:
        >>> fitted_ceiling(2 << 30, 50 << 20, 4)
        422
        >>> fitted_ceiling(64 << 30, 50 << 20, 4)
        1024
    """
    room = int(limit * HEADROOM) - supervisor_rss
    return max(1, min(DEFAULT_CEILING_MIB, (room // max(children, 1)) >> 20))


class Ceiling(msgspec.Struct, frozen=True):
    """The RSS ceiling a worker's children recycle above, and what to say about it."""

    mib: int  # 0: no ceiling
    words: str  # the ceiling in a child's recycling line: "worker_max_memory_per_child=300"
    notes: tuple[tuple[int, str], ...] = ()  # (logging level, line) to log at start-up

    @classmethod
    def of_setting(cls, mib: int | None) -> Ceiling:
        """The ceiling ``worker_max_memory_per_child`` says, as it stands (None: none).

        Example:
            >>> Ceiling.of_setting(300).words
            'worker_max_memory_per_child=300'
        """
        return cls(mib or 0, f"{_NAME}={mib or 0}")


def choose_ceiling(
    setting: int | None, chosen: bool, limit: MemoryLimit | None, supervisor_rss: int, children: int
) -> Ceiling:
    """The per-child RSS ceiling of a worker with ``children`` child processes.

    Left at its default, ``worker_max_memory_per_child`` is fitted to ``limit`` (see
    :func:`fitted_ceiling`); a value the user chose is kept, with a warning when the
    children could together pass ``limit`` before any of them reaches it. Either way a
    ceiling below ``supervisor_rss`` (what a fresh child, a copy of the supervisor,
    already uses) is an error: every child would be replaced after each task.

    Example:
        >>> limit = MemoryLimit(2 << 30, "cgroup v1", "/sys/fs/cgroup/memory/job")
        >>> c = choose_ceiling(1024, False, limit, 50 << 20, 4)
        >>> c.mib, c.notes[0][1]
        (422, 'children recycle above 422 MiB of RSS: the container allows 2.0 GiB for 4 \
children and the supervisor; set worker_max_memory_per_child to choose')
    """
    fresh = supervisor_rss >> 20
    if chosen:
        return _chosen_ceiling(setting or 0, limit, supervisor_rss, children)
    if limit is None:
        mib = DEFAULT_CEILING_MIB
        why = "the default: the memory limit of this host or container could not be read"
        note = f"children recycle above {mib} MiB of RSS ({why}); set {_NAME} to choose"
        return Ceiling(mib, f"its ceiling of {mib} MiB ({_NAME}'s default)", ((_INFO, note),))
    mib = fitted_ceiling(limit.bytes, supervisor_rss, children)
    allows = f"{limit.owner} allows {size_text(limit.bytes)} for {_children(children)}"
    if mib >= DEFAULT_CEILING_MIB:
        said = f"children recycle above {mib} MiB of RSS ({_NAME}'s default; {allows})"
    else:
        said = f"children recycle above {mib} MiB of RSS: {allows} and the supervisor"
    notes = [(_INFO, f"{said}; set {_NAME} to choose")]
    if mib < fresh:
        notes.append((_ERROR, _too_low(mib, fresh, limit, children)))
    return Ceiling(mib, f"its ceiling of {mib} MiB (fitted: {allows})", tuple(notes))


def _chosen_ceiling(
    mib: int, limit: MemoryLimit | None, supervisor_rss: int, children: int
) -> Ceiling:
    words = Ceiling.of_setting(mib).words
    if not mib:
        return Ceiling(0, words, ((_INFO, f"children do not recycle by memory ({_NAME} off)"),))
    notes = [(_INFO, f"children recycle above {mib} MiB of RSS ({_NAME})")]
    fresh = supervisor_rss >> 20
    if mib < fresh:
        notes.append((_ERROR, _too_low(mib, fresh)))
    elif limit is not None and children * (mib << 20) + supervisor_rss > limit.bytes:
        notes.append((_WARNING, _over(mib, limit, supervisor_rss, children)))
    return Ceiling(mib, words, tuple(notes))


def _over(mib: int, limit: MemoryLimit, supervisor_rss: int, children: int) -> str:
    fits = int(limit.bytes * HEADROOM - supervisor_rss) // (mib << 20)
    fewer = f", or the concurrency to -c {fits}" if 0 < fits < children else ""
    # Celery's --max-memory-per-child counts KiB: its 200000 (~195 MiB) is 195 GiB here.
    # Said when the value read as KiB is a ceiling that works: above a fresh child, fitting.
    kib = mib >> 10
    meant = (
        f" Celery's --max-memory-per-child counts KiB and celeriac's MiB: for {mib} KiB, "
        f"write {kib}."
        if kib > supervisor_rss >> 20 and children * (kib << 20) + supervisor_rss <= limit.bytes
        else ""
    )
    return (
        f"{_NAME}={mib} MiB for {_children(children)} adds up to "
        f"{size_text(children * (mib << 20))}, more than the {size_text(limit.bytes)} "
        f"{limit.owner} allows ({limit.path}): the kernel's OOM killer will kill children, "
        f"and the tasks they run, before they recycle. Lower {_NAME} to "
        f"{fitted_ceiling(limit.bytes, supervisor_rss, children)} or less{fewer}.{meant}"
    )


def _too_low(mib: int, fresh: int, limit: MemoryLimit | None = None, children: int = 0) -> str:
    """The error for a ceiling no child can stay under: chosen, or fitted to ``limit``."""
    below = (
        f"below what a fresh child already uses ({fresh} MiB, the app and its imports), so "
        "every child will be replaced after each task it runs"
    )
    if limit is None:
        return (
            f"{_NAME}={mib} MiB is {below}. Raise it (--max-memory-per-child) well above "
            f"{fresh} MiB, or set {_NAME} = 0 for no limit."
        )
    return (
        f"{limit.owner} allows {size_text(limit.bytes)} ({limit.path}), which leaves "
        f"{mib} MiB per child for {_children(children)}: {below}, and together they may "
        "still pass the limit and be killed by the OOM killer. Lower the concurrency (-c), "
        f"give {limit.owner} more memory, or set {_NAME} (--max-memory-per-child) to choose."
    )


def _children(count: int) -> str:
    return f"{count} child{'ren' if count != 1 else ''}"


def size_text(size: int) -> str:
    """Bytes for a person: whole MiB under 1 GiB, else GiB to one decimal.

    Example:
        >>> size_text(400 << 20), size_text(2 << 30), size_text(23_690_000 * 1024)
        ('400 MiB', '2.0 GiB', '22.6 GiB')
    """
    if size < 1 << 30:
        return f"{size >> 20} MiB"
    return f"{size / (1 << 30):.1f} GiB"


# -- reading ---------------------------------------------------------------------------


def _mem_total(meminfo: str) -> int | None:
    """MemTotal of ``/proc/meminfo`` in bytes."""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    return int(match.group(1)) * 1024 if match and int(match.group(1)) > 0 else None


def _cgroup_limit(groups: dict[str, str], mounts: list[Mount]) -> MemoryLimit | None:
    """The smallest cgroup memory limit of this process: v2 where it has a memory
    controller, else v1's memory controller (a hybrid host has both hierarchies)."""
    for mount in mounts:
        if mount.kind == "cgroup2" and "" in groups:
            found = _smallest(mount, groups[""], "memory.max", "cgroup v2")
            if found is not None:
                return found
    for mount in mounts:
        if mount.kind == "cgroup" and "memory" in mount.options and "memory" in groups:
            found = _smallest(mount, groups["memory"], "memory.limit_in_bytes", "cgroup v1")
            if found is not None:
                return found
    return None


def _smallest(mount: Mount, group: str, name: str, source: str) -> MemoryLimit | None:
    """The smallest limit in ``name`` files from the process's cgroup up to the mount's top."""
    best: MemoryLimit | None = None
    for here in up_the_tree(mount, group):
        limit = _limit_in(here / name)
        if limit is not None and (best is None or limit < best.bytes):
            best = MemoryLimit(limit, source, str(here / name))
    return best


def _limit_in(path: Path) -> int | None:
    """The number in a limit file; None for "max", a huge number, garbage or no file."""
    text = read_small(path).strip()
    if not text.isdigit():
        return None  # "max" (v2's no limit), empty, or not a number
    value = int(text)
    return value if 0 < value < _UNLIMITED else None
