"""The driver's helpers: statistics and worker processes (standard library, redis, psutil).

The tasks' side (counting, stamping) is in :mod:`benchmarks.probes`, kept apart so that
a task module imports nothing heavy: RQ imports it afresh in every forked work horse.
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import redis
from benchmarks.probes import now

# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


# -- worker processes --------------------------------------------------------------------


@dataclass
class Workers:
    """Worker processes started for one measurement, stopped by PID.

    Args:
        commands: one argument list per top-level process to start.
        env: the environment of every process.
        log: a file that collects their output (read back when something goes wrong).
        cwd: their working directory (the repository root, so ``benchmarks`` imports).
    """

    commands: list[list[str]]
    env: Mapping[str, str]
    log: Path
    cwd: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _seen: dict[int, psutil.Process] = field(default_factory=dict)

    def start(self) -> float:
        """Start every process; return the shared clock's time just before the first."""
        started = now()
        with self.log.open("ab") as out:
            for command in self.commands:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=dict(self.env),
                        cwd=self.cwd,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        return started

    def check_alive(self) -> None:
        """Raise if a top-level process has exited (a worker that failed to start)."""
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"worker {process.args!r} exited with {process.returncode}:\n{self.tail()}"
                )

    def tree(self) -> list[psutil.Process]:
        """Every live process: the top-level ones and all their descendants."""
        found: list[psutil.Process] = []
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                top = psutil.Process(process.pid)
                found.append(top)
                found.extend(top.children(recursive=True))
        for proc in found:
            self._seen.setdefault(proc.pid, proc)  # remembered so stop() can reach orphans
        return found

    def memory(self) -> dict[str, float]:
        """RSS, PSS and USS of all worker processes, summed, in MiB, and how many there are.

        PSS charges a page shared by k processes 1/k to each, so the sum over a forked
        family counts every page once; RSS counts shared pages in every process.
        """
        rss = pss = uss = 0
        processes = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                info = proc.memory_full_info()
                rss, pss, uss = rss + info.rss, pss + info.pss, uss + info.uss
                processes += 1
        mib = 1024 * 1024
        return {"rss_mb": rss / mib, "pss_mb": pss / mib, "uss_mb": uss / mib, "procs": processes}

    def cpu_seconds(self) -> float:
        """User + system CPU of every worker process so far, reaped children included
        (RQ's work horses), in seconds."""
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the top-level processes, then SIGKILL whatever of the family is left.

        Every process is addressed by its PID through psutil, which checks the creation
        time, so a PID reused by an unrelated process is never signalled.
        """
        family = self.tree()
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = now() + timeout
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - now()))
        leftovers = {p.pid: p for p in [*family, *self._seen.values()]}
        for proc in leftovers.values():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if proc.is_running():
                    proc.kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def tail(self, chars: int = 3000) -> str:
        """The end of the workers' log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def redis_cpu_seconds(client: redis.Redis) -> float:
    """User + system CPU that redis-server has used so far, in seconds."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
