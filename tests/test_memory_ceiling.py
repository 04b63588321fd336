"""Children recycle before the container's OOM killer fires.

The memory limit that applies to a process is read from cgroup v2, cgroup v1 or the host
(celeriac.worker.memory): checked against the running system's own files, and against
files written here (numbers, ``max``, garbage, missing files, a container's view). Then a
real worker runs inside a real cgroup v1 memory limit: left at its default, the per-child
ceiling is fitted to the limit (children recycle instead of being OOM-killed); a ceiling
the user chose is kept, with a warning when it cannot fit; and a fitted ceiling below a
fresh child's size is refused in words that name the container's limit. Those tests need
root and a writable cgroup v1 memory hierarchy; elsewhere they skip, naming the path tried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from celeriac.config import Settings
from celeriac.control import broadcast
from celeriac.testing import wait_for
from celeriac.worker.memory import (
    DEFAULT_CEILING_MIB,
    HEADROOM,
    MemoryLimit,
    choose_ceiling,
    fitted_ceiling,
    memory_limit,
)
from tests.apps import core
from tests.cgroup_dirs import fresh_v1_group, own_v1_dir
from tests.conftest import ROOT

MiB, GiB = 1 << 20, 1 << 30
APP = "tests.apps.core"
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 writes for "no limit" (4 KiB pages)

# -- the running system's own files -------------------------------------------------------


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_the_running_systems_limit_is_read_and_never_above_the_hosts_memory() -> None:
    limit = memory_limit()
    assert limit is not None, "nothing readable in /proc on Linux"
    assert 0 < limit.bytes <= _mem_total()
    own = own_v1_dir("memory")
    if own is None or not (own / "memory.stat").exists():
        return
    # cgroup v1 says itself what binds this process: the smallest limit up its tree.
    stat = dict(line.split() for line in (own / "memory.stat").read_text().splitlines())
    binding = min(int(stat["hierarchical_memory_limit"]), _mem_total())
    if limit.source != "cgroup v2":  # on a host with both, v2's memory.max comes first
        assert limit.bytes == binding, (limit, binding)


def test_the_limit_of_a_real_cgroup_is_read_through_proc(v1_cgroup: Path, tmp_path: Path) -> None:
    # A process inside a real cgroup: the limit is found from /proc/PID, as it is for self.
    (v1_cgroup / "memory.limit_in_bytes").write_text(str(300 * MiB))
    sleeper = subprocess.Popen(
        ["sh", "-c", f"echo $$ > {v1_cgroup}/cgroup.procs; exec sleep 30"],
    )
    try:
        procfs = Path(f"/proc/{sleeper.pid}")
        assert wait_for(lambda: str(sleeper.pid) in (v1_cgroup / "cgroup.procs").read_text(), 10)
        copied = _proc_dir_for(procfs, tmp_path / "proc")
        limit = memory_limit(copied)
        assert limit == MemoryLimit(
            300 * MiB, "cgroup v1", str(v1_cgroup / "memory.limit_in_bytes")
        ), limit
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def _proc_dir_for(procfs: Path, copied: Path) -> Path:
    """A /proc look-alike whose ``self`` is another process (``memory_limit`` reads self)."""
    (copied / "self").mkdir(parents=True)
    for name in ("cgroup", "mountinfo"):
        (copied / "self" / name).write_text((procfs / name).read_text())
    (copied / "meminfo").write_text(Path("/proc/meminfo").read_text())
    return copied


# -- files written here: a /proc and cgroup trees of our own ------------------------------------


@dataclass
class HostFiles:
    """A /proc (self/cgroup, self/mountinfo, meminfo) and cgroup mounts under tmp_path."""

    root: Path

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    def write(self, cgroup: str, mounts: list[tuple[str, str, str, str]], mem_kb: int) -> None:
        """``mounts``: (type, root, mount point under self.root, super options)."""
        (self.proc / "self").mkdir(parents=True, exist_ok=True)
        (self.proc / "self" / "cgroup").write_text(cgroup)
        lines = [
            f"{30 + i} 23 0:{28 + i} {r} {self.root / point} rw,relatime - {kind} {kind} {opts}"
            for i, (kind, r, point, opts) in enumerate(mounts)
        ]
        (self.proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
        (self.proc / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree: 1 kB\n")

    def limit_file(self, relative: str, text: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path


@pytest.fixture
def host(tmp_path: Path) -> HostFiles:
    return HostFiles(tmp_path)


HOST_KB = 8 * 1024 * 1024  # an 8 GiB host
V2 = [("cgroup2", "/", "cg2", "rw")]
V1 = [("cgroup", "/", "cg1/memory", "rw,memory")]


def test_cgroup_v2_memory_max_as_a_number(host: HostFiles) -> None:
    host.write("0::/app.slice/job\n", V2, HOST_KB)
    path = host.limit_file("cg2/app.slice/job/memory.max", "2147483648\n")
    assert memory_limit(host.proc) == MemoryLimit(2 * GiB, "cgroup v2", str(path))


def test_cgroup_v2_max_means_no_limit_but_a_parents_limit_binds(host: HostFiles) -> None:
    host.write("0::/app.slice/job\n", V2, HOST_KB)
    host.limit_file("cg2/app.slice/job/memory.max", "max\n")
    parent = host.limit_file("cg2/app.slice/memory.max", str(3 * GiB))
    assert memory_limit(host.proc) == MemoryLimit(3 * GiB, "cgroup v2", str(parent))


def test_cgroup_v2_max_everywhere_leaves_the_hosts_memory(host: HostFiles) -> None:
    host.write("0::/job\n", V2, HOST_KB)
    host.limit_file("cg2/job/memory.max", "max\n")
    assert memory_limit(host.proc) == MemoryLimit(
        HOST_KB * 1024, "host", str(host.proc / "meminfo")
    )


def test_cgroup_v1_limit_and_its_unlimited_value(host: HostFiles) -> None:
    host.write("4:memory:/docker/abc\n0::/\n", V1, HOST_KB)
    path = host.limit_file("cg1/memory/docker/abc/memory.limit_in_bytes", str(512 * MiB))
    host.limit_file("cg1/memory/memory.limit_in_bytes", V1_UNLIMITED)
    assert memory_limit(host.proc) == MemoryLimit(512 * MiB, "cgroup v1", str(path))
    path.write_text(V1_UNLIMITED + "\n")
    assert memory_limit(host.proc) == MemoryLimit(
        HOST_KB * 1024, "host", str(host.proc / "meminfo")
    )


def test_a_hybrid_host_without_v2_memory_reads_v1(host: HostFiles) -> None:
    # As on this machine: cgroup2 mounted at .../unified with no memory controller in it.
    host.write("4:memory:/job\n0::/\n", [("cgroup2", "/", "cg/unified", "rw"), *V1], HOST_KB)
    (host.root / "cg/unified").mkdir(parents=True)
    path = host.limit_file("cg1/memory/job/memory.limit_in_bytes", str(1 * GiB))
    assert memory_limit(host.proc) == MemoryLimit(1 * GiB, "cgroup v1", str(path))


def test_a_containers_own_view_of_its_cgroup(host: HostFiles) -> None:
    # Docker without a cgroup namespace (v1): the mount's root is the container's cgroup,
    # mounted at the top, and /proc/self/cgroup names the same path.
    mount = [("cgroup", "/docker/abc", "cg1/memory", "rw,memory")]
    host.write("4:memory:/docker/abc\n", mount, HOST_KB)
    path = host.limit_file("cg1/memory/memory.limit_in_bytes", str(700 * MiB))
    assert memory_limit(host.proc) == MemoryLimit(700 * MiB, "cgroup v1", str(path))


def test_a_mount_point_with_a_space_is_unescaped(host: HostFiles) -> None:
    host.write("0::/job\n", [("cgroup2", "/", "my\\040cgroups", "rw")], HOST_KB)
    path = host.limit_file("my cgroups/job/memory.max", str(900 * MiB))
    assert memory_limit(host.proc) == MemoryLimit(900 * MiB, "cgroup v2", str(path))


def test_a_cgroup_limit_above_the_hosts_memory_binds_nothing(host: HostFiles) -> None:
    host.write("0::/job\n", V2, HOST_KB)
    host.limit_file("cg2/job/memory.max", str(64 * GiB))
    assert memory_limit(host.proc) == MemoryLimit(
        HOST_KB * 1024, "host", str(host.proc / "meminfo")
    )


@pytest.mark.parametrize(
    "garbage",
    ["", "lots\n", "-1\n", "0\n", "12.5\n", b"\xff\xfe\x00\x01", "1e9\n", "max max\n"],
)
def test_garbage_in_a_limit_file_is_skipped(host: HostFiles, garbage: str | bytes) -> None:
    host.write("0::/job\n4:memory:/job\n", [*V2, *V1], HOST_KB)
    host.limit_file("cg2/job/memory.max", garbage)
    host.limit_file("cg1/memory/job/memory.limit_in_bytes", garbage)
    assert memory_limit(host.proc) == MemoryLimit(
        HOST_KB * 1024, "host", str(host.proc / "meminfo")
    )


def test_garbage_in_proc_files_never_raises(host: HostFiles) -> None:
    (host.proc / "self").mkdir(parents=True)
    (host.proc / "self" / "cgroup").write_bytes(b"\x00\xff::::\n:memory\n7\n")
    (host.proc / "self" / "mountinfo").write_text("- cgroup2\n1 2 3 - cgroup\n - - -\n")
    (host.proc / "meminfo").write_text("MemTotal: lots kB\n")
    assert memory_limit(host.proc) is None
    (host.proc / "meminfo").unlink()
    (host.proc / "meminfo").mkdir()  # a directory where a file belongs
    assert memory_limit(host.proc) is None


def test_missing_files(host: HostFiles) -> None:
    assert memory_limit(host.proc) is None  # no /proc at all
    host.write("0::/job\n", V2, HOST_KB)  # cgroup files missing: the host's memory
    assert memory_limit(host.proc) == MemoryLimit(
        HOST_KB * 1024, "host", str(host.proc / "meminfo")
    )
    (host.proc / "meminfo").unlink()
    path = host.limit_file("cg2/job/memory.max", str(1 * GiB))  # only the cgroup readable
    assert memory_limit(host.proc) == MemoryLimit(1 * GiB, "cgroup v2", str(path))


def test_a_process_outside_the_mounts_view_reads_no_cgroup(host: HostFiles) -> None:
    # A cgroup namespace can show the process's cgroup above the mount's root ("/../x").
    host.write("0::/../other\n", [("cgroup2", "/mine", "cg2", "rw")], HOST_KB)
    host.limit_file("cg2/memory.max", str(1 * GiB))
    assert memory_limit(host.proc) == MemoryLimit(
        HOST_KB * 1024, "host", str(host.proc / "meminfo")
    )


# -- what the supervisor does with the limit ------------------------------------------------

CONTAINER_2G = MemoryLimit(2 * GiB, "cgroup v1", "/sys/fs/cgroup/memory/job/memory.limit_in_bytes")


def test_the_default_is_fitted_to_the_container_and_said_in_one_line() -> None:
    ceiling = choose_ceiling(1024, False, CONTAINER_2G, 40 * MiB, 4)
    assert ceiling.mib == (int(2 * GiB * HEADROOM) - 40 * MiB) // 4 // MiB
    assert 4 * ceiling.mib * MiB + 40 * MiB <= 2 * GiB
    ((level, line),) = ceiling.notes
    assert level == logging.INFO
    assert line == (
        f"children recycle above {ceiling.mib} MiB of RSS: the container allows 2.0 GiB for 4 "
        "children and the supervisor; set worker_max_memory_per_child to choose"
    )


def test_the_default_stays_1024_where_memory_is_plenty() -> None:
    host = MemoryLimit(64 * GiB, "host", "/proc/meminfo")
    ceiling = choose_ceiling(1024, False, host, 40 * MiB, 2)
    assert ceiling.mib == DEFAULT_CEILING_MIB
    assert "the host allows 64.0 GiB for 2 children" in ceiling.notes[0][1]
    unknown = choose_ceiling(1024, False, None, 40 * MiB, 2)
    assert unknown.mib == DEFAULT_CEILING_MIB
    assert "could not be read" in unknown.notes[0][1]


def test_a_chosen_value_that_cannot_fit_is_kept_with_a_warning() -> None:
    ceiling = choose_ceiling(1024, True, CONTAINER_2G, 40 * MiB, 8)
    assert ceiling.mib == 1024
    assert ceiling.words == "worker_max_memory_per_child=1024"
    (_, said), (level, warning) = ceiling.notes
    assert level == logging.WARNING
    assert "1024 MiB of RSS" in said
    assert "for 8 children adds up to 8.0 GiB, more than the 2.0 GiB the container" in warning
    assert "OOM killer" in warning
    fitted = fitted_ceiling(2 * GiB, 40 * MiB, 8)
    assert f"Lower worker_max_memory_per_child to {fitted} or less, or the concurrency to -c 1" in (
        warning
    )


def test_a_chosen_value_that_reads_as_celery_s_kib_says_so() -> None:
    # Celery's 200000 is KiB (~195 MiB); here it is MiB, and children never recycled.
    host = MemoryLimit(24 * GiB, "host", "/proc/meminfo")
    (_, _), (level, warning) = choose_ceiling(200_000, True, host, 40 * MiB, 2).notes
    assert level == logging.WARNING
    said = (
        "Celery's --max-memory-per-child counts KiB and celeriac's MiB: for 200000 KiB, write 195."
    )
    assert said in warning
    # A value that is too big either way is not taken for KiB.
    (_, _), (_, warning) = choose_ceiling(1024, True, CONTAINER_2G, 40 * MiB, 8).notes
    assert "KiB" not in warning


def test_a_chosen_value_that_fits_or_is_off_warns_nothing() -> None:
    fits = choose_ceiling(400, True, CONTAINER_2G, 40 * MiB, 4)
    assert fits.mib == 400 and [level for level, _ in fits.notes] == [logging.INFO]
    off = choose_ceiling(None, True, CONTAINER_2G, 40 * MiB, 64)
    assert off.mib == 0 and [level for level, _ in off.notes] == [logging.INFO]


def test_a_fitted_ceiling_below_a_fresh_child_names_the_containers_limit() -> None:
    ceiling = choose_ceiling(1024, False, CONTAINER_2G, 300 * MiB, 16)
    (level, error) = ceiling.notes[-1]
    assert level == logging.ERROR
    assert error.startswith(
        "the container allows 2.0 GiB (/sys/fs/cgroup/memory/job/memory.limit_in_bytes), "
        f"which leaves {ceiling.mib} MiB per child for 16 children: below what a fresh child "
        "already uses (300 MiB"
    )
    assert "Lower the concurrency (-c)" in error
    chosen = choose_ceiling(100, True, CONTAINER_2G, 300 * MiB, 1)
    assert "worker_max_memory_per_child=100 MiB is below what a fresh child" in chosen.notes[-1][1]


def test_settings_tell_a_default_from_a_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "worker_max_memory_per_child"
    assert not Settings().was_set(name)
    assert Settings(worker_max_memory_per_child=300).was_set(name)
    chosen = Settings()
    chosen.update(worker_max_memory_per_child=1024)  # the default's value, but chosen
    assert chosen.was_set(name)
    monkeypatch.setenv("CELERIAC_WORKER_MAX_MEMORY_PER_CHILD", "")  # off, from the environment
    from_env = Settings.from_environment()
    assert from_env.was_set(name) and from_env.worker_max_memory_per_child is None
    assert Settings() == Settings.from_environment({})  # equality ignores the bookkeeping


# -- a real worker in a real cgroup ---------------------------------------------------------


@pytest.fixture
def v1_cgroup() -> Iterator[Path]:
    """A fresh cgroup v1 memory group, under this process's own (so whatever limits this
    process limits it too); removed once its processes are gone."""
    with fresh_v1_group("memory", {"memory.limit_in_bytes": str(1 * GiB)}) as group:
        yield group


@dataclass
class CgroupWorker:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text()

    def wait_line(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.text())
            if match:
                found.append(match)
            return bool(match) or self.proc.poll() is not None

        assert wait_for(seen, timeout=30) and found, f"no {pattern!r} in:\n{self.text()}"
        return found[0]


@pytest.fixture
def start_in_cgroup(
    v1_cgroup: Path, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., CgroupWorker]]:
    """Start ``celeriac worker`` inside ``v1_cgroup`` under a memory limit; each worker is
    stopped (and its children killed) by PID at the end."""
    monkeypatch.setattr(core.app.conf, "broker_url", sqlite_url)
    started: list[CgroupWorker] = []

    def start(limit: int, *args: str) -> CgroupWorker:
        (v1_cgroup / "memory.limit_in_bytes").write_text(str(limit))
        log = tmp_path / f"worker-{len(started)}.log"
        env = {
            **os.environ,
            "CELERIAC_BROKER_URL": sqlite_url,
            # This checkout's code, whatever celeriac is installed.
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        }
        command = f"echo $$ > {v1_cgroup}/cgroup.procs && exec {sys.executable} -m celeriac"
        with log.open("wb") as output:
            proc = subprocess.Popen(
                ["sh", "-c", f'{command} "$@"', "sh", "-A", APP, "worker", "-l", "info", *args],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        started.append(CgroupWorker(proc, log))
        return started[-1]

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            children = [c.pid for c in psutil.Process(worker.proc.pid).children()]
            worker.proc.send_signal(signal.SIGKILL)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
    core.app.broker.close()


def _oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0  # kernels before 4.13 do not count: the worker's log says it instead


@pytest.mark.slow
def test_children_recycle_at_the_fitted_ceiling_instead_of_being_oom_killed(
    start_in_cgroup: Callable[..., CgroupWorker], v1_cgroup: Path
) -> None:
    # Before: -c 4 in 400 MiB recycled children above 1024 MiB each, so the kernel killed
    # all four (SIGKILL, tasks delivered again) at ~400 MiB together.
    worker = start_in_cgroup(400 * MiB, "-c", "4")
    said = worker.wait_line(
        r"children recycle above (\d+) MiB of RSS: the container allows 400 MiB for 4 children"
    )
    ceiling = int(said.group(1))
    assert 4 * ceiling * MiB < 400 * MiB * HEADROOM
    results = [core.leak.delay(10) for _ in range(40)]  # each keeps 10 MiB for good
    assert wait_for(lambda: all(r.ready() for r in results), timeout=60), worker.text()
    assert {r.state for r in results} == {"SUCCESS"}, worker.text()
    text = worker.text()
    recycled = re.findall(
        rf"uses ([\d.]+) MiB, over its ceiling of {ceiling} MiB \(fitted: the container allows "
        r"400 MiB for 4 children\); recycling",
        text,
    )
    assert recycled, text
    assert all(float(rss) > ceiling for rss in recycled)
    assert "died" not in text, text
    assert _oom_kills(v1_cgroup) == 0, text
    (reply,) = broadcast(core.app, "stats", timeout=5)
    assert reply.data["max_memory_per_child_mb"] == ceiling


@pytest.mark.slow
def test_a_chosen_ceiling_that_cannot_fit_the_container_is_kept_with_a_warning(
    start_in_cgroup: Callable[..., CgroupWorker],
) -> None:
    worker = start_in_cgroup(400 * MiB, "-c", "4", "--max-memory-per-child", "300")
    warning = worker.wait_line(r"WARNING .*worker_max_memory_per_child=300 MiB for 4 children.*")
    assert "adds up to 1.2 GiB, more than the 400 MiB the container allows" in warning.group(0)
    assert "Lower worker_max_memory_per_child to " in warning.group(0)
    assert "children recycle above 300 MiB of RSS (worker_max_memory_per_child)" in worker.text()
    assert wait_for(lambda: broadcast(core.app, "stats", timeout=1), timeout=20)
    (reply,) = broadcast(core.app, "stats", timeout=5)
    assert reply.data["max_memory_per_child_mb"] == 300  # the user's value stands


@pytest.mark.slow
def test_a_container_too_small_for_its_children_is_named_at_start_up(
    start_in_cgroup: Callable[..., CgroupWorker],
) -> None:
    worker = start_in_cgroup(160 * MiB, "-c", "8")
    error = worker.wait_line(r"ERROR .*below what a fresh child already uses.*")
    assert "the container allows 160 MiB (" in error.group(0)
    assert "per child for 8 children" in error.group(0)
    assert "Lower the concurrency (-c)" in error.group(0)
