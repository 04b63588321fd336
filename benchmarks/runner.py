"""The benchmark run: plan every measurement, run each in its system's interpreter, aggregate.

Runs in celeriac's interpreter (``scripts/bench`` calls ``python -m benchmarks``). It
starts one private redis-server, and for each repetition runs every system's steps in
turn on a flushed server; a step is one ``benchmarks.driver`` subprocess. Repetitions are
the outer loop, so noise from the rest of the machine spreads over every system instead
of landing on whichever ran during a burst. Each figure is the median of the
repetitions, with min and max.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.adapters import ASYNC_SYSTEMS, SYSTEMS, VENVS
from benchmarks.common import summary
from benchmarks.driver import MARKER
from benchmarks.redis_server import redis_server

ROOT = Path(__file__).resolve().parent.parent
VENV_ROOT = ROOT / "benchmarks" / ".peers-venv"
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    reps: int
    enqueue: int
    drain: int
    drain_rq: int  # RQ forks a process per job (~100/s here): 20,000 would take minutes
    drain_arq: int  # arq polls every 0.5 s (~200/s here): 20,000 take 100 s per run
    latency: int
    latency_budget: float  # seconds: arq polls every 0.5 s, 500 probes would take minutes
    broker_memory: int
    group: int
    chord: int


FULL = Sizes(
    reps=3,
    enqueue=20_000,
    drain=20_000,
    drain_rq=2_000,
    drain_arq=20_000,
    latency=500,
    latency_budget=60.0,
    broker_memory=10_000,
    group=20_000,
    chord=10_000,
)
QUICK = Sizes(
    reps=1,
    enqueue=2_000,
    drain=2_000,
    drain_rq=200,
    drain_arq=500,
    latency=100,
    latency_budget=4.0,
    broker_memory=2_000,
    group=2_000,
    chord=1_000,
)

#: What each kept value is called in the results, and its unit.
METRICS: dict[str, tuple[str, str]] = {
    "redis_py_single": ("plain redis-py RPUSH, one call each (the floor)", "calls/s"),
    "redis_py_piped": ("plain redis-py RPUSH, pipelined by 1,000 (the floor)", "calls/s"),
    "enqueue_single": ("enqueue, one call each", "tasks/s"),
    "enqueue_batch": ("enqueue, batch API", "tasks/s"),
    "drain": ("drain, worker start to last completion", "tasks/s"),
    "drain_steady": ("drain, first to last completion", "tasks/s"),
    "drain_startup": ("drain, worker start to first completion", "s"),
    "cpu_workers": ("CPU per task in the worker processes, while draining", "us"),
    "cpu_redis": ("CPU per task in redis-server, while draining", "us"),
    "latency_p50": ("enqueue-to-start latency p50", "ms"),
    "latency_p99": ("enqueue-to-start latency p99", "ms"),
    "idle_rss": ("idle worker RSS, all processes", "MiB"),
    "idle_pss": ("idle worker PSS, all processes", "MiB"),
    "idle_procs": ("worker processes", "count"),
    "latency_probes": ("latency probes taken", "count"),
    "broker_bytes": ("broker memory per queued task", "bytes"),
    "group_send": ("group send", "tasks/s"),
    "chord": ("chord, send to body's result", "s"),
}


@dataclass
class Step:
    """One measurement: a driver call, and which of its values to keep under which name."""

    system: str
    broker: str  # "redis" or "sqlite"
    variant: str  # "" for the headline figures; "c1", "100B", "asyncio"... otherwise
    params: dict[str, Any]
    keep: dict[str, str]  # driver's value name -> metric name
    timeout: float = 900.0

    @property
    def label(self) -> str:
        """A short name for progress lines."""
        parts = [self.system, self.broker if self.broker != "redis" else "", self.variant]
        return " ".join(p for p in [*parts, self.params["op"]] if p)


@dataclass
class Measurement:
    """Every repetition of one metric of one system (and variant)."""

    system: str
    broker: str
    variant: str
    metric: str
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, with the median, min and max."""
        label, unit = METRICS[self.metric]
        row: dict[str, Any] = {
            "system": self.system,
            "broker": self.broker,
            "variant": self.variant,
            "metric": self.metric,
            "label": label,
            "unit": unit,
            "values": self.values,
        }
        if self.values:
            row.update(summary(self.values))
        if self.errors:
            row["errors"] = self.errors
        return row


def interpreter(system: str) -> str:
    """The Python that runs ``system``: celeriac's own, or the peers' venv that holds it."""
    venv = VENVS[system]
    if venv is None:
        return sys.executable
    return str(VENV_ROOT / venv / "bin" / "python")


def headline_steps(system: str, sizes: Sizes, batch: bool, broker: str = "redis") -> list[Step]:
    """The five measurements every system gets (enqueue, drain, latency, memory)."""
    drain_n = {"rq": sizes.drain_rq, "arq": sizes.drain_arq}.get(system, sizes.drain)
    steps = [
        Step(
            system,
            broker,
            "",
            {"op": "enqueue", "n": sizes.enqueue, "batch": False},
            {"rate": "enqueue_single"},
        ),
        Step(
            system,
            broker,
            "",
            {"op": "drain", "n": drain_n, "timeout": 600},
            {
                "rate": "drain",
                "steady": "drain_steady",
                "startup": "drain_startup",
                "cpu_us_workers": "cpu_workers",
                "cpu_us_redis": "cpu_redis",
            },
        ),
        Step(
            system,
            broker,
            "",
            {"op": "idle", "n": sizes.latency, "latency_budget": sizes.latency_budget},
            {
                "rss_mb": "idle_rss",
                "pss_mb": "idle_pss",
                "procs": "idle_procs",
                "p50_ms": "latency_p50",
                "p99_ms": "latency_p99",
                "probes": "latency_probes",
            },
        ),
        Step(
            system,
            broker,
            "",
            {"op": "broker_memory", "n": sizes.broker_memory},
            {"bytes_per_task": "broker_bytes"},
        ),
    ]
    if batch:
        steps.insert(
            1,
            Step(
                system,
                broker,
                "",
                {"op": "enqueue", "n": sizes.enqueue, "batch": True},
                {"rate": "enqueue_batch"},
            ),
        )
    return steps


def celeriac_extra_steps(sizes: Sizes, canvas: bool, systems: list[str]) -> list[Step]:
    """celeriac alone: SQLite, group and chord, -c 1/4, payload sizes; and the asyncio
    comparison with the asyncio peers that are in this run."""
    steps = headline_steps("celeriac", sizes, batch=True, broker="sqlite")
    drain = {
        "rate": "drain",
        "steady": "drain_steady",
        "cpu_us_workers": "cpu_workers",
        "cpu_us_redis": "cpu_redis",
    }
    for concurrency in (1, 4):  # -c 2 is the headline drain
        steps.append(
            Step(
                "celeriac",
                "redis",
                f"c{concurrency}",
                {"op": "drain", "n": sizes.drain, "concurrency": concurrency},
                drain,
            )
        )
    for size, name in ((100, "100B"), (10 * 1024, "10KiB")):
        steps.append(
            Step(
                "celeriac",
                "redis",
                name,
                {"op": "drain", "n": sizes.drain, "data_size": size},
                drain,
            )
        )
    if canvas:
        steps.append(
            Step("celeriac", "redis", "", {"op": "group", "n": sizes.group}, {"rate": "group_send"})
        )
        steps.append(
            Step(
                "celeriac",
                "redis",
                "",
                {"op": "chord", "n": sizes.chord, "timeout": 600},
                {"seconds": "chord"},
            )
        )
    for system in ASYNC_SYSTEMS:
        if system in systems:
            steps.append(
                Step(
                    system,
                    "redis",
                    "asyncio",
                    {
                        "op": "drain",
                        "n": sizes.drain,
                        "task": "sleep",
                        "pool": "asyncio",
                        "concurrency": 2,
                    },
                    drain,
                )
            )
    return steps


def run_driver(system: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one driver subprocess in ``system``'s interpreter; its parsed result."""
    command = [interpreter(system), "-m", "benchmarks.driver", json.dumps(params)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"driver timed out after {timeout:.0f}s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            return result
    tail = (done.stdout + done.stderr)[-2000:]
    return {"ok": False, "error": f"driver exited {done.returncode} without a result:\n{tail}"}


def describe(system: str) -> dict[str, Any]:
    """The adapter's description and its interpreter's versions (a quick driver call)."""
    return run_driver(system, {"system": system, "op": "describe", "redis": ""}, 120)


class Runner:
    """Plans, runs and records one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        if args.reps:
            self.sizes = Sizes(**{**self.sizes.__dict__, "reps": args.reps})
        self.systems = [s for s in SYSTEMS if s in args.systems.split(",")]
        self.work = Path(tempfile.mkdtemp(prefix="bench-"))
        self.measurements: dict[tuple[str, str, str, str], Measurement] = {}
        self.steps_log: list[dict[str, Any]] = []

    def plan(self, described: dict[str, dict[str, Any]]) -> list[Step]:
        """Every step of one repetition, system by system."""
        # The floor first: plain redis-py on the same server, the yardstick of the rates.
        steps: list[Step] = [
            Step(
                "celeriac",
                "redis",
                "floor",
                {"op": "floor", "n": self.sizes.enqueue},
                {"single": "redis_py_single", "piped": "redis_py_piped"},
            )
        ]
        for system in self.systems:
            info = described[system]
            if info.get("ok"):
                steps += headline_steps(system, self.sizes, batch=bool(info.get("batch")))
        celeriac = described.get("celeriac", {})
        if celeriac.get("ok") and not self.args.no_extras:
            steps += celeriac_extra_steps(self.sizes, bool(celeriac.get("canvas")), self.systems)
        return steps

    def run_step(self, step: Step, redis_url: str, rep: int, index: int) -> None:
        """Run one step, record its values, print one progress line."""
        params = {
            **step.params,
            "system": step.system,
            "redis": redis_url,
            "log": str(self.work / f"{step.system}-{index}-{rep}.log"),
        }
        if step.broker == "sqlite":
            params["broker"] = f"sqlite:///{self.work}/celeriac-{index}-{rep}.db"
        load = os.getloadavg()[0]
        started = time.monotonic()
        result = run_driver(step.system, params, step.timeout)
        elapsed = time.monotonic() - started
        self.steps_log.append(
            {"step": step.label, "rep": rep, "load1": load, "seconds": elapsed, "result": result}
        )
        for value_name, metric in step.keep.items():
            key = (step.system, step.broker, step.variant, metric)
            m = self.measurements.setdefault(key, Measurement(*key))
            if result.get("ok") and result.get(value_name) is not None:
                m.values.append(float(result[value_name]))
            elif not result.get("ok"):
                m.errors.append(str(result.get("error", "?"))[:500])
        shown = ", ".join(
            f"{metric}={result[name]:.4g}"
            for name, metric in step.keep.items()
            if result.get("ok") and isinstance(result.get(name), int | float)
        )
        status = shown if result.get("ok") else f"FAILED: {str(result.get('error'))[:300]}"
        print(f"  [{rep + 1}/{self.sizes.reps}] {step.label:<34} {elapsed:6.1f}s  {status}")
        sys.stdout.flush()

    def run(self) -> dict[str, Any]:
        """Everything: describe, plan, repeat, aggregate. Returns the results document."""
        started_at = dt.datetime.now(dt.UTC)
        load_before = os.getloadavg()
        described = {s: describe(s) for s in self.systems}
        for system, info in described.items():
            if not info.get("ok"):
                print(f"{system}: cannot run: {info.get('error')}", file=sys.stderr)
        with redis_server() as redis_url:
            server = redis_version(redis_url)
            steps = self.plan(described)
            print(f"{len(steps)} steps x {self.sizes.reps} repetition(s), Redis {server}")
            for rep in range(self.sizes.reps):
                for index, step in enumerate(steps):
                    self.run_step(step, redis_url, rep, index)
        shutil.rmtree(self.work, ignore_errors=True)
        return {
            "meta": self.meta(started_at, load_before, server, described),
            "sizes": self.sizes.__dict__,
            "systems": {
                s: {k: v for k, v in info.items() if k not in {"ok"}}
                for s, info in described.items()
            },
            "measurements": [m.as_dict() for m in self.measurements.values()],
            "steps": self.steps_log,
        }

    def meta(
        self,
        started_at: dt.datetime,
        load_before: tuple[float, float, float],
        server: str,
        described: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        """Where, when and how the run was made."""
        loads = [s["load1"] for s in self.steps_log]
        return {
            "date": started_at.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "command": "scripts/bench " + " ".join(self.args.argv),
            "quick": self.args.quick,
            "machine": machine(),
            "redis_server": server,
            "celeriac_commit": git_commit(),
            "python": {s: info.get("python") for s, info in described.items()},
            "versions": {s: info.get("versions") for s, info in described.items()},
            "pip_freeze": {
                "celeriac's interpreter": pip_freeze(interpreter("celeriac")),
                "peers-venv/main": pip_freeze(interpreter("celery")),
                "peers-venv/arq": pip_freeze(interpreter("arq")),
            },
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "load_during_max": max(loads) if loads else None,
            "load_during_median": sorted(loads)[len(loads) // 2] if loads else None,
        }


def redis_version(url: str) -> str:
    """The private server's version."""
    import redis

    return str(redis.Redis.from_url(url).info("server")["redis_version"])


def machine() -> dict[str, Any]:
    """nproc, memory and CPU model (from /proc), kernel."""
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu_model": cpu,
        "kernel": platform.release(),
    }


def pip_freeze(python: str) -> list[str]:
    """Every distribution installed in an interpreter, pinned (``pip freeze``)."""
    try:
        done = subprocess.run(
            [python, "-m", "pip", "freeze", "--all"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.split()


def git_commit() -> str | None:
    """The checked-out commit, with ``+dirty`` when the work tree has changes (read-only)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def results_path(doc: dict[str, Any]) -> Path:
    """``benchmarks/results/<date>-<host>[-quick].json``."""
    date = doc["meta"]["date"][:10]
    suffix = "-quick" if doc["meta"]["quick"] else ""
    return RESULTS / f"{date}-{doc['meta']['host']}{suffix}.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line of ``scripts/bench``."""
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition (< 2 min)")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 3; quick 1)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset of " + ",".join(SYSTEMS),
    )
    parser.add_argument("--no-extras", action="store_true", help="skip celeriac's extra figures")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite docs/benchmarks.md and the charts (default: yes, except with --quick)",
    )
    parser.add_argument(
        "--report", metavar="RESULTS_JSON", help="only rebuild the docs and charts from a file"
    )
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or rebuild the report) and write the results."""
    from benchmarks import report

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report:
        path = Path(args.report)
        doc = json.loads(path.read_text())
    else:
        doc = Runner(args).run()
        path = results_path(doc)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"results: {path.relative_to(ROOT)}")
    print(report.text_tables(doc))
    if args.report or (args.docs if args.docs is not None else not args.quick):
        report.write_docs(doc, path, python=interpreter("celery"))
    return 0
