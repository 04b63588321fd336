"""Where this process's cgroups are: the files its memory and CPU limits are read from.

A process's cgroup (one per cgroup v1 controller, one for cgroup v2) comes from
``/proc/self/cgroup`` and the mount that shows it from ``/proc/self/mountinfo``, so a
cgroup mounted elsewhere than ``/sys/fs/cgroup`` (hybrid hosts mount cgroup2 at
``/sys/fs/cgroup/unified``) or seen through a container's own root is found too. A limit
set on an ancestor binds its descendants, so readers look at every directory from the
process's cgroup up to the mount's top (:func:`up_the_tree`). Nothing here raises: what
cannot be read is empty.

Example:
    >>> from pathlib import Path
    >>> groups, mounts = own_cgroups(Path("/nonexistent"))
    >>> groups, mounts
    ({}, [])
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec


def read_small(path: Path) -> str:
    """A small file's text, or "" when it cannot be read (missing, no permission, binary)."""
    try:
        with path.open("rb") as handle:
            return handle.read(1 << 20).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


class Mount(msgspec.Struct, frozen=True):
    """A cgroup hierarchy as ``/proc/self/mountinfo`` shows it."""

    kind: str  # "cgroup2" or "cgroup"
    root: str  # the cgroup this mount shows as its top (a container sees its own)
    point: str
    options: frozenset[str]  # super options: the controllers of a v1 mount


def own_cgroups(proc: Path) -> tuple[dict[str, str], list[Mount]]:
    """This process's cgroups ({controller: path}; cgroup v2's under "") and the cgroup
    mounts, read from ``proc`` (``/proc``, or a look-alike in tests)."""
    groups = parse_cgroups(read_small(proc / "self" / "cgroup"))
    return groups, parse_mounts(read_small(proc / "self" / "mountinfo"))


def parse_cgroups(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; the cgroup v2 entry is under "".

    Example:
        >>> parse_cgroups("4:cpu,cpuacct:/docker/abc\\n0::/\\n")
        {'cpu': '/docker/abc', 'cpuacct': '/docker/abc', '': '/'}
    """
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            groups.setdefault(controller, parts[2])
    return groups


def parse_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup mounts of ``/proc/self/mountinfo``.

    A line is ``id parent major:minor root mount-point options [optional...] - type source
    super-options``; paths escape spaces and the like as octal (``\\040``).
    """
    mounts = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(rest[2].split(","))
        mounts.append(Mount(rest[0], _unescape(fields[3]), _unescape(fields[4]), options))
    return mounts


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def up_the_tree(mount: Mount, group: str) -> list[Path]:
    """The directories of cgroup ``group`` and of each ancestor up to ``mount``'s top
    (whose limits bind it too); none when ``group`` is outside what the mount shows.

    Example:
        >>> mount = Mount("cgroup2", "/", "/sys/fs/cgroup", frozenset())
        >>> [str(p) for p in up_the_tree(mount, "/kubepods/pod1")]
        ['/sys/fs/cgroup/kubepods/pod1', '/sys/fs/cgroup/kubepods', '/sys/fs/cgroup']
    """
    relative = _relative(group, mount.root)
    if relative is None:
        return []
    top = Path(mount.point)
    here = top.joinpath(*relative)
    found = [here]
    while here != top and top in here.parents:
        here = here.parent
        found.append(here)
    return found


def _relative(group: str, root: str) -> list[str] | None:
    """The parts of ``group`` below ``root``; [] when equal, None when outside it."""
    group_parts = [p for p in group.split("/") if p]
    root_parts = [p for p in root.split("/") if p]
    if ".." in group_parts or group_parts[: len(root_parts)] != root_parts:
        return None
    return group_parts[len(root_parts) :]
