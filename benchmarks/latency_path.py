"""Where an enqueue-to-start latency goes, at low load (the evidence in docs/benchmarks.md).

Usage::

    python -m benchmarks.latency_path [--probes 1000] [--gap-ms 4]

Two measurements on a private Redis. Each puts a clock on the sockets celeriac's fast path
drives (``wire._Link.sock``, wrapped so that ``recv_into`` and ``sendall`` note the time;
nothing else changes, and the wrapper is removed afterwards):

- ``child``: one real process-pool child (``Child`` and ``Executor``, the default
  middleware) in this process takes probes that a producer process sends one every
  ``gap``, so the child waits idle in its ``BLPOP`` before each. Per probe: from the
  ``recv`` that completed the fetch reply to the fetch returning its deliveries, the
  message decoded and checked (``Executor.prepare``), the slot written, and the task's
  first line.
- ``producer``: ``delay()`` in this process, from the call to the ``sendall`` of its
  script call: back to back, then after sleeping ``gap`` before each call.

No profiler runs, so the figures are real times; each wrapper adds well under a
microsecond. Use it to compare the parts, and the benchmark itself for the latency.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.common import percentile
from benchmarks.redis_server import redis_server

TASK = "latency_path.probe"
WARMUP = 50  # probes not counted: connections, scripts and caches settle first
_marks: dict[str, int] = {}  # point -> perf_counter_ns when last reached


def _mark(point: str) -> None:
    _marks[point] = time.perf_counter_ns()


class _ClockedSocket:
    """A socket that notes when a read returned and when a write started."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def recv_into(self, buffer: Any, *args: Any) -> int:
        size: int = self._sock.recv_into(buffer, *args)
        _mark("recv")
        return size

    def sendall(self, data: Any) -> None:
        _mark("send")
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@contextmanager
def _patched(owner: Any, name: str, wrap: Callable[[Any], Any]) -> Iterator[None]:
    """Replace ``owner.name`` by ``wrap(original)`` for the block's duration."""
    original = owner.__dict__[name]
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _marking(point: str) -> Callable[[Any], Any]:
    """A wrapper that marks ``point`` when the wrapped function returns."""

    def wrap(function: Any) -> Any:
        def marked(*args: Any, **kwargs: Any) -> Any:
            value = function(*args, **kwargs)
            _mark(point)
            return value

        return marked

    return wrap


@contextmanager
def _clocked() -> Iterator[None]:
    """Clocks on the wire's sockets and on the child's steps before a task starts."""
    from celeriac.brokers.redis import wire
    from celeriac.worker.child import Child
    from celeriac.worker.reading import Reading

    def link_init(original: Any) -> Any:
        def init(self: Any, conn: Any) -> None:
            original(self, conn)
            self.sock = _ClockedSocket(self.sock)

        return init

    with (
        _patched(wire._Link, "__init__", link_init),
        _patched(Child, "_fetch", _marking("fetched")),
        # Where prepare is defined (the executor's mixin): _patched restores it there.
        _patched(Reading, "prepare", _marking("prepared")),
        _patched(Child, "_publish", _marking("published")),
    ):
        yield


def make_app(url: str, on_probe: Callable[[], None]) -> Any:
    """An app on ``url`` whose probe task calls ``on_probe`` on its first line."""
    from celeriac import Celeriac

    app = Celeriac("latency_path", broker=url)

    @app.task(name=TASK)
    def probe(i: int) -> None:
        """A probe: marks its start."""
        on_probe()

    return app


def send_probes(url: str, count: int, gap: float) -> None:
    """The producer process of ``child``: ``count`` probes, one every ``gap`` seconds."""
    probe = make_app(url, lambda: None).tasks[TASK]
    for i in range(count):
        probe.delay(i)
        time.sleep(gap)


def child_path(url: str, probes: int, gap: float) -> dict[str, list[float]]:
    """Per probe, microseconds from the fetch reply's recv to each point."""
    from celeriac.worker.child import Child, ChildSpec
    from celeriac.worker.executor import Executor
    from celeriac.worker.slot import Slot

    spans: dict[str, list[float]] = {p: [] for p in ("fetched", "prepared", "published", "task")}
    seen = 0

    def on_probe() -> None:
        nonlocal seen
        _mark("task")
        seen += 1
        if seen > WARMUP:
            arrived = _marks["recv"]
            for point, values in spans.items():
                at = _marks.get(point, 0)
                if at >= arrived:  # reached for this probe, after its reply came
                    values.append((at - arrived) / 1000)
        if seen >= probes + WARMUP:
            child.stopping = True

    with _clocked():
        app = make_app(url, on_probe)
        app.broker  # noqa: B018 - connect and load the scripts before the producer starts
        child = Child(app, ChildSpec("latency", ("default",), 0, consumer="latency/0.1"), Slot())
        command = [sys.executable, "-m", "benchmarks.latency_path", "--send-probes", url]
        command += [str(probes + WARMUP), str(gap)]
        producer = subprocess.Popen(command)
        try:
            child._consume(Executor(app, "latency"), key=0)
        finally:
            producer.kill()
            producer.wait()
    return spans


def producer_path(url: str, probes: int, gap: float) -> dict[str, list[float]]:
    """Microseconds from ``delay()``'s call to its request's sendall: hot, then after idle."""
    runs: dict[str, list[float]] = {}
    with _clocked():
        probe = make_app(url, lambda: None).tasks[TASK]
        for label, pause in (("back to back", 0.0), (f"after {gap * 1000:g} ms idle", gap)):
            values = runs[label] = []
            for i in range(probes + WARMUP):
                if pause:
                    time.sleep(pause)
                called = time.perf_counter_ns()
                probe.delay(i)
                if i >= WARMUP:
                    values.append((_marks["send"] - called) / 1000)
    return runs


def _table(title: str, rows: dict[str, list[float]]) -> None:
    print(title)
    print(f"  {'':40} {'p10':>7} {'p50':>7} {'p90':>7}")
    for label, values in rows.items():
        if values:
            cells = " ".join(f"{percentile(values, q):7.1f}" for q in (0.1, 0.5, 0.9))
            print(f"  {label:40} {cells}   (n={len(values)})")


def main(argv: list[str] | None = None) -> int:
    """Measure both paths and print them."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_path")
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--gap-ms", type=float, default=4.0, help="idle time before a probe")
    parser.add_argument("--send-probes", nargs=3, metavar=("URL", "COUNT", "GAP"))
    args = parser.parse_args(argv)
    if args.send_probes:  # the producer process that child_path starts
        url, count, gap = args.send_probes
        send_probes(url, int(count), float(gap))
        return 0
    gap = args.gap_ms / 1000
    with redis_server() as url:
        child = child_path(url, args.probes, gap)
        _table(
            f"child, a probe every {args.gap_ms:g} ms: microseconds from the recv that"
            " completed its fetch reply to",
            {
                "the fetch returning its deliveries": child["fetched"],
                "the message decoded and checked": child["prepared"],
                "the slot written (what the child holds)": child["published"],
                "the task's first line": child["task"],
            },
        )
        _table(
            "producer: microseconds from delay()'s call to the sendall of its request",
            producer_path(url, args.probes, gap),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
