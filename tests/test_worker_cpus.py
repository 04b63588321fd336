"""A worker left at its default concurrency runs as many children as the CPUs it may use.

``os.cpu_count()`` counts the host's CPUs: a container limited to 2 CPUs on a 64-CPU node
(``limits.cpu``, ``docker run --cpus``) or pinned to some of them (``--cpuset-cpus``,
``taskset``) started 64 children. The quota is read from files written here (cgroup v2
``cpu.max``, v1 ``cpu.cfs_quota_us``) and, where this process may make one, from a real
cgroup v1 CPU group; the affinity from a real worker started on one CPU.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from celeriac import Celeriac
from celeriac.cli.worker_cmd import default_concurrency
from celeriac.testing import wait_for
from celeriac.worker.cpus import CpuLimit, Cpus, cpu_limit, usable_cpus
from tests.cgroup_dirs import fresh_v1_group
from tests.conftest import ROOT

V2 = "0::/kubepods/pod1/ctr\n"


def _proc(root: Path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> Path:
    """A /proc look-alike (self/cgroup, self/mountinfo); ``mounts``: (type, root, mount
    point under ``root``, super options)."""
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    lines = [
        f"{30 + i} 23 0:{28 + i} {r} {root / point} rw,relatime - {kind} {kind} {opts}"
        for i, (kind, r, point, opts) in enumerate(mounts)
    ]
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    return proc


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_cpu_max_and_a_parents_smaller_quota(tmp_path: Path) -> None:
    proc = _proc(tmp_path, V2, [("cgroup2", "/", "cg2", "rw")])
    own = _write(tmp_path / "cg2/kubepods/pod1/ctr/cpu.max", "250000 100000\n")
    assert cpu_limit(proc) == CpuLimit(2.5, str(own))
    assert CpuLimit(2.5, str(own)).rounded == 3  # a fraction of a CPU still keeps one busy
    pod = _write(tmp_path / "cg2/kubepods/pod1/cpu.max", "150000 100000\n")
    assert cpu_limit(proc) == CpuLimit(1.5, str(pod))
    _write(tmp_path / "cg2/kubepods/pod1/cpu.max", "max 100000\n")
    assert cpu_limit(proc) == CpuLimit(2.5, str(own))


def test_cgroup_v1_cfs_quota_and_its_unlimited_value(tmp_path: Path) -> None:
    mounts = [("cgroup", "/", "cg1/cpu,cpuacct", "rw,cpu,cpuacct")]
    proc = _proc(tmp_path, "3:cpu,cpuacct:/docker/abc\n0::/\n", mounts)
    folder = tmp_path / "cg1/cpu,cpuacct/docker/abc"
    quota = _write(folder / "cpu.cfs_quota_us", "50000\n")
    _write(folder / "cpu.cfs_period_us", "100000\n")
    assert cpu_limit(proc) == CpuLimit(0.5, str(quota))
    assert CpuLimit(0.5, str(quota)).rounded == 1
    quota.write_text("-1\n")
    assert cpu_limit(proc) is None


@pytest.mark.parametrize("garbage", ["", "max\n", "lots 100000\n", "0 100000\n", "1 2 3\n"])
def test_garbage_or_no_quota_is_no_limit(tmp_path: Path, garbage: str) -> None:
    proc = _proc(tmp_path, V2, [("cgroup2", "/", "cg2", "rw")])
    _write(tmp_path / "cg2/kubepods/pod1/ctr/cpu.max", garbage)
    assert cpu_limit(proc) is None
    assert usable_cpus(proc) == usable_cpus(tmp_path / "no-proc-here")


def test_a_quota_below_the_hosts_cpus_is_the_count_and_is_explained(tmp_path: Path) -> None:
    proc = _proc(tmp_path, V2, [("cgroup2", "/", "cg2", "rw")])
    path = _write(tmp_path / "cg2/kubepods/pod1/ctr/cpu.max", "50000 100000\n")
    cpus = usable_cpus(proc)
    assert cpus.count == 1
    if (os.cpu_count() or 1) > 1 and len(os.sched_getaffinity(0)) > 1:
        assert cpus == Cpus(
            1, f"the container's CPU limit is 0.5 ({path}) on a host with {os.cpu_count()}"
        )


# -- real workers ---------------------------------------------------------------------------


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Start ``celeriac worker`` (concurrency left at its default) with ``prefix`` before
    its command line; stopped warmly, or killed with its children, at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(prefix: str = "", **popen: Any) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"worker-{len(started)}.log"
        env = {k: v for k, v in os.environ.items() if k != "CELERIAC_WORKER_CONCURRENCY"}
        env["CELERIAC_BROKER_URL"] = f"sqlite:///{tmp_path}/broker.db"
        env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"  # this checkout's code
        command = f"{prefix}exec {sys.executable} -m celeriac -A tests.apps.core worker -l info"
        with log.open("wb") as output:
            proc = subprocess.Popen(
                ["sh", "-c", command],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                **popen,
            )
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            children = [c.pid for c in psutil.Process(proc.pid).children()]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _children_started(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The start-up line's "N child(ren)", once the worker has said it."""
    pattern = r"starting (\d+ child(?:ren)?) on queues"
    assert wait_for(lambda: re.search(pattern, log.read_text()) or proc.poll() is not None, 30)
    found = re.search(pattern, log.read_text())
    assert found, log.read_text()
    return found.group(1)


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin a worker to one of them"
)
def test_a_worker_pinned_to_one_cpu_starts_one_child(start_worker: Callable[..., Any]) -> None:
    one = min(os.sched_getaffinity(0))
    proc, log = start_worker(preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    assert _children_started(proc, log) == "1 child", log.read_text()
    assert "concurrency 1: its CPU affinity allows 1 of the host's" in log.read_text()


@pytest.fixture
def cpu_cgroup() -> Iterator[Path]:
    """A fresh cgroup v1 CPU group under this process's own, limited to one CPU."""
    # cfs_period_us is 100000 (0.1 s) unless the host changed it: the quota is one period.
    with fresh_v1_group(
        "cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}
    ) as group:
        yield group


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs to limit a worker to one")
def test_a_worker_in_a_one_cpu_container_starts_one_child(
    start_worker: Callable[..., Any], cpu_cgroup: Path
) -> None:
    proc, log = start_worker(f"echo $$ > {cpu_cgroup}/cgroup.procs && ")
    assert _children_started(proc, log) == "1 child", log.read_text()
    assert f"the container's CPU limit is 1 ({cpu_cgroup}/cpu.cfs_quota_us)" in log.read_text()


def test_a_chosen_concurrency_is_kept_whatever_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    one = Cpus(1, "the container's CPU limit is 1 (cpu.max) on a host with 64")
    assert default_concurrency(Celeriac("t", broker="memory://"), one) == 1
    assert default_concurrency(Celeriac("t", broker="memory://", worker_concurrency=8), one) == 8
    monkeypatch.setenv("CELERIAC_WORKER_CONCURRENCY", "6")
    assert default_concurrency(Celeriac("t", broker="memory://"), one) == 6
