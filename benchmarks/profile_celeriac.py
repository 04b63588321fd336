"""Where celeriac's time goes per task, on a private Redis (the evidence in docs/benchmarks.md).

Usage::

    python -m benchmarks.profile_celeriac [--tasks 20000] [--top 25]
    python -m benchmarks.profile_celeriac --ablations [--tasks 10000]
    python -m benchmarks.profile_celeriac --lua [--tasks 10000]
    python -m benchmarks.profile_celeriac --budget [--tasks 10000]

Two profiles, each under cProfile (wall-clock timer) in this one process:

- ``delay``: ``noop.delay(i)`` one call at a time, the producer's whole path;
- ``consume``: one worker child's consume loop (the real ``Child`` and ``Executor``, the
  default middleware, results stored, events on) draining pre-queued no-ops that do
  nothing at all, so every microsecond is celeriac's.

Each profile is summarised as microseconds per task by component: time in a built-in
(a socket call, ``open``) is charged to the component of the Python function that called
it. Redis's own share comes from ``INFO commandstats``. cProfile slows Python code down
(roughly 1.5-2x on call-heavy code) but not the time spent waiting on a socket, so the
Python parts here are upper bounds; compare components with each other, and use the
benchmark itself for absolute rates.

``--ablations`` runs no profiler: it times the same consume loop (wall and CPU per task,
and Redis's own time per task) with one cost switched off at a time, in this process only
(a setting, or a function replaced for the run; no file is changed), to show what each
cost is worth. It also times the floor of one round trip: a plain redis-py RPUSH, and
the same command sent on the connection without redis-py's per-command machinery.

``--budget`` splits the drain benchmark's CPU per task in two: what the benchmark's own
counter costs (the ``probes.task_done()`` every system's task calls: one 8-byte append to
a file), and what celeriac's consume loop costs for a task that does nothing, each in
this process's CPU and redis-server's CPU (``INFO cpu``, so socket work is counted as in
the benchmark). It then says how fast a drain on two cores could be at best.

``--lua`` reads Redis's own time per call of the settle-and-fetch script from ``INFO
commandstats``, and what its parts cost: the call set-up with the same number of KEYS and
ARGV, and two pieces of Lua it runs on every call.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from benchmarks.redis_server import redis_server

if TYPE_CHECKING:
    from celeriac.brokers.records import Delivery
    from celeriac.worker.batch import Batch

#: Component of a function, by the first matching fragment of "file:function".
COMPONENTS: list[tuple[str, str]] = [
    ("current_rss", "child: RSS reads (/proc/self/statm)"),
    ("celeriac/brokers/", "broker: keys, script arguments, replies"),
    ("_publish", "child: slot writes (what the child holds)"),
    ("slot.py", "child: slot writes (what the child holds)"),
    ("recv_into", "socket: waiting for Redis"),
    ("sendall", "socket: sending to Redis"),
    ("/redis/", "redis-py client"),
    ("hiredis", "redis-py client"),
    ("celeriac/brokers/", "broker: keys, script arguments, replies"),
    ("celeriac/codec.py", "codec: encode / decode"),
    ("celeriac/message.py", "codec: encode / decode"),
    ("msgspec", "codec: encode / decode"),
    ("celeriac/middleware/events.py", "middleware: events"),
    ("celeriac/middleware/", "middleware: other hooks"),
    ("celeriac/worker/executor.py", "executor: prepare, call, settle, log"),
    ("celeriac/worker/reading.py", "executor: prepare, call, settle, log"),
    ("celeriac/worker/", "child: consume loop"),
    ("celeriac/task.py", "task.py: Message and Request objects"),
    ("celeriac/options.py", "task.py: Message and Request objects"),
    ("celeriac/app.py", "app.py: publish, the broker property"),
    ("celeriac/result.py", "producer: result handle"),
    ("uuid", "task.py: Message and Request objects"),
    ("logging", "logging"),
    ("profile_celeriac", "the task itself"),
]


def component(func: tuple[str, int, str]) -> str | None:
    """The component of a pstats function key, or None for an unclassified built-in."""
    filename, _, name = func
    text = f"{filename}:{name}"
    for fragment, label in COMPONENTS:
        if fragment in text:
            return label
    return None if filename == "~" else "other Python"


def per_component(stats: pstats.Stats) -> Counter[str]:
    """Own time per component; a built-in's time goes to its callers' components."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: Counter[str] = Counter()
    for func, (_, _, own, _, callers) in table.items():
        label = component(func)
        if label is not None:
            totals[label] += own
            continue
        # A built-in (open, read, time.time...): share its time among its callers.
        spent = sum(c[3] for c in callers.values()) or 1.0
        for caller, (_, _, _, cumulative) in callers.items():
            totals[component(caller) or "other built-ins"] += own * cumulative / spent
    return totals


def show(title: str, stats: pstats.Stats, tasks: int, top: int) -> None:
    """Print microseconds per task by component, then the top functions."""
    totals = per_component(stats)
    whole = sum(totals.values())
    print(f"\n== {title}: {tasks:,} tasks, {1e6 * whole / tasks:,.0f} us per task under cProfile")
    for label, seconds in totals.most_common():
        if seconds / whole >= 0.005:
            print(f"  {1e6 * seconds / tasks:8.1f} us  {100 * seconds / whole:5.1f}%  {label}")
    stats.sort_stats("tottime").print_stats(top)


def redis_commands(server: Any, tasks: int) -> None:
    """Redis's own time per task, by command (INFO commandstats), then reset them."""
    rows = []
    for name, info in server.info("commandstats").items():
        rows.append((float(info["usec"]) / tasks, int(info["calls"]) / tasks, name[8:]))
    print("  redis-server time per task, by command (us, calls per task):")
    for usec, calls, name in sorted(rows, reverse=True)[:8]:
        print(f"    {usec:7.1f} us  {calls:5.2f}  {name}")
    server.config_resetstat()


def make_app(url: str) -> tuple[Any, Any]:
    """A fresh app on ``url`` with a task that does nothing, connected."""
    from celeriac import Celeriac

    app = Celeriac("profile", broker=url)

    @app.task(name="profile_celeriac.noop")
    def noop(i: int) -> None:
        """Nothing at all: every microsecond measured is celeriac's."""

    app.broker  # noqa: B018 - connect (and load scripts) before measuring
    return app, noop


def consumer(app: Any) -> Any:
    """One process-pool child (the real class), that stops when the queue is empty."""
    from celeriac.worker.child import Child, ChildSpec
    from celeriac.worker.slot import Slot

    child = Child(app, ChildSpec("profile", ("default",), 0, consumer="profile/0.1"), Slot())
    # The child's private fetch is wrapped (on this instance only) because a real child
    # never stops on an empty queue; everything else it does is left as it is.
    fetch = child._fetch

    def fetch_or_stop(batch: Batch) -> list[Delivery]:
        got = fetch(batch)
        child.stopping = not got
        return got

    child._fetch = fetch_or_stop  # type: ignore[method-assign]
    return child


def consume(app: Any) -> int:
    """Drain the default queue with one child in this process; the tasks it ran."""
    from celeriac.worker.executor import Executor

    child = consumer(app)
    # The consume loop itself, without Child.run's signal handlers (this is no child).
    child._consume(Executor(app, "profile"), key=0)
    return int(child.tasks_done)


def ablations(url: str, tasks: int) -> None:
    """Time the consume loop with one cost removed at a time (see the module docstring)."""
    import redis
    from celeriac.middleware.base import MiddlewareStack
    from celeriac.worker import child as child_module

    server = redis.Redis.from_url(url)
    real_rss = child_module.current_rss
    body = b"x" * 160  # about the size of celeriac's no-op message
    server.delete("floor")
    started = time.perf_counter()
    for _ in range(tasks):
        server.rpush("floor", body)
    floor = 1e6 * (time.perf_counter() - started) / tasks
    print(f"floor: one plain redis-py RPUSH round trip = {floor:.0f} us ({1e6 / floor:,.0f}/s)")
    # The same command on the same kind of connection, without redis-py's per-command
    # machinery (retry wrapper, pool checkout, observability hooks): what is left is the
    # socket and Redis.
    # Any: redis-py leaves Connection.pack_command and send_packed_command unannotated.
    conn: Any = server.connection_pool.get_connection()
    started = time.perf_counter()
    for _ in range(tasks):
        conn.send_packed_command(conn.pack_command("RPUSH", "floor", body), check_health=False)
        conn.read_response()
    direct = 1e6 * (time.perf_counter() - started) / tasks
    server.connection_pool.release(conn)
    print(
        f"       the same RPUSH packed, sent and read on the connection directly = {direct:.0f} us"
    )

    def baseline(app: Any, noop: Any) -> None:
        """As shipped."""

    def no_events(app: Any, noop: Any) -> None:
        app.conf.worker_send_task_events = False

    def no_rss(app: Any, noop: Any) -> None:
        child_module.current_rss = lambda: 0

    def no_results(app: Any, noop: Any) -> None:
        app.conf.task_ignore_result = True

    def no_middleware(app: Any, noop: Any) -> None:
        app.middleware = MiddlewareStack([])

    def all_off(app: Any, noop: Any) -> None:
        for change in (no_events, no_rss, no_results, no_middleware):
            change(app, noop)

    cases = [
        ("as shipped", baseline),
        ("task events off (worker_send_task_events=False)", no_events),
        ("no RSS reads (current_rss replaced by a constant)", no_rss),
        ("results not stored (task_ignore_result=True)", no_results),
        ("no middleware at all", no_middleware),
        ("all four above", all_off),
    ]
    print(f"consume loop, one child, {tasks:,} no-ops each:")
    print("     wall us/task   CPU us/task   Redis us/task   tasks/s   case")
    for label, change in cases:
        server.flushall()
        app, noop = make_app(url)
        app.publish_many([noop.message((i,)) for i in range(tasks)])
        change(app, noop)
        server.config_resetstat()
        try:
            cpu, started = time.process_time(), time.perf_counter()
            done = consume(app)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            child_module.current_rss = real_rss
        usec = sum(float(v["usec"]) for v in server.info("commandstats").values())
        print(
            f"     {1e6 * wall / done:12.0f}   {1e6 * cpu / done:11.0f}   {usec / done:13.0f}"
            f"   {done / wall:7,.0f}   {label}"
        )


def budget(url: str, tasks: int, cores: int = 2) -> None:
    """The drain's CPU per task, split into the benchmark's counter and celeriac's own."""
    import tempfile

    import redis
    from benchmarks import probes
    from benchmarks.common import redis_cpu_seconds

    server = redis.Redis.from_url(url)
    fd, path = tempfile.mkstemp(prefix="bench-done-")
    os.close(fd)
    os.environ["BENCH_COUNTER_FILE"] = path

    def measured(run: Any) -> tuple[float, float]:
        """(this process's CPU, redis-server's CPU) per task, in microseconds."""
        cpu, served = time.process_time(), redis_cpu_seconds(server)
        done = run()
        cpu, served = time.process_time() - cpu, redis_cpu_seconds(server) - served
        return 1e6 * cpu / done, 1e6 * served / done

    def counter() -> int:
        for _ in range(tasks):
            probes.task_done()
        return tasks

    def queued_noops() -> Any:
        """An app with ``tasks`` no-ops queued (not measured: the drain starts full)."""
        app, noop = make_app(url)
        app.publish_many([noop.message((i,)) for i in range(tasks)])
        return app

    probes.task_done()  # open the file first
    counters, loops = [], []
    try:
        for _ in range(3):  # interleaved: the machine's speed drifts
            server.flushall()
            counters.append(measured(counter))
            app = queued_noops()
            loops.append(measured(lambda: consume(app)))  # noqa: B023 - called at once
    finally:
        os.unlink(path)
    counter_cpu, counter_redis = sorted(counters)[1]  # the median run, by worker CPU
    own_cpu, own_redis = sorted(loops)[1]
    counted = counter_cpu + counter_redis
    total = counted + own_cpu + own_redis
    print(f"CPU per task, median of 3 runs of {tasks:,}, microseconds:")
    print("                                            worker   redis-server")
    print(f"  the benchmark's counter (8-byte append) {counter_cpu:8.0f}   {counter_redis:12.0f}")
    print(f"  celeriac's consume loop, no-op task     {own_cpu:8.0f}   {own_redis:12.0f}")
    print(f"  together: {total:.0f} us per counted task")
    print(f"  drain at best, all {cores} cores busy: {cores * 1e6 / total:,.0f} tasks/s")
    print(f"  the same if celeriac cost nothing: {cores * 1e6 / counted:,.0f} tasks/s")


def lua_costs(url: str, calls: int) -> None:
    """Redis's own time per task in complete_many-0.lua (a worker's batch settle-and-fetch
    of 32), against what its parts cost."""
    import redis
    from celeriac.brokers.redis.scripts import load

    batch = 32
    server = redis.Redis.from_url(url)
    app, noop = make_app(url)
    app.publish_many([noop.message((i,)) for i in range(calls + batch)])
    broker, queues = app.broker, ["default"]
    got = broker.fetch(queues, "profile/0.1", limit=batch, lease_seconds=30, timeout=0.5)
    result = b'{"state":"SUCCESS","task":"profile_celeriac.noop","date_done":1795506141.8}'
    server.config_resetstat()
    done = 0
    while done < calls and got:
        _, more = broker.complete_many(
            [(d.lease, result) for d in got],
            3600,
            queues,
            "profile/0.1",
            limit=batch,
            lease_seconds=30,
        )
        done, got = done + len(got), more
    stats = server.info("commandstats")
    script = stats.pop("cmdstat_evalsha")
    inside = sum(float(v["usec"]) for v in stats.values()) / done
    print(f"complete_many-0.lua as shipped: {script['usec'] / done:.1f} us per task in Redis")
    print(f"  ({batch} per call), of which the Redis commands it calls: {inside:.1f} us")
    text = load("complete_many-0").text.decode()
    setup = text[: text.index("local reply = settle_many(")] + "return 1\n"
    keys = [f"{{default}}:k{i}" for i in range(19)]
    argv = ["x"] * (5 + 11 * batch)  # as many ARGV as the real call
    snippets = {
        "per call: the same KEYS and ARGV, the includes, then return": (setup, keys, argv),
        "an LMPOP argument table for 10 priorities (as take() builds)": (
            "local a, w = {0}, {} for p = 9, 0, -1 do local k = KEYS[p + 1]; "
            "a[#a + 1] = k; w[k] = {1, 2, p} end return 1",
            keys,
            [],
        ),
        "cmsgpack pack + unpack of a 190-byte held record": (
            "local r = cmsgpack.pack('12', 'host:1:abcdef/0.1', ARGV[1]); "
            "local a, b, c = cmsgpack.unpack(r) return 1",
            [],
            ["x" * 190],
        ),
    }
    for label, (snippet, snippet_keys, argv) in snippets.items():
        sha = server.script_load(snippet)
        server.config_resetstat()
        for _ in range(calls):
            server.evalsha(sha, len(snippet_keys), *snippet_keys, *argv)
        usec = server.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        print(f"  {usec:5.1f} us  {label}")


def main(argv: list[str] | None = None) -> int:
    """Run both profiles and print them (or the ablations)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_celeriac")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile")
    parser.add_argument("--ablations", action="store_true", help="time costs one by one")
    parser.add_argument("--lua", action="store_true", help="Redis time of the settle script")
    parser.add_argument(
        "--budget", action="store_true", help="drain CPU: the benchmark's counter vs celeriac"
    )
    args = parser.parse_args(argv)
    with redis_server() as url:
        os.environ["CELERIAC_BROKER_URL"] = url
        if args.ablations:
            ablations(url, args.tasks)
            return 0
        if args.lua:
            lua_costs(url, args.tasks)
            return 0
        if args.budget:
            budget(url, args.tasks)
            return 0
        import redis

        server = redis.Redis.from_url(url)
        app, noop = make_app(url)
        noop.delay(-1)
        server.config_resetstat()
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        for i in range(args.tasks):
            noop.delay(i)
        profile.disable()
        elapsed = time.perf_counter() - started
        print(f"delay(): {args.tasks / elapsed:,.0f}/s under cProfile")
        show("noop.delay(i), one call each", pstats.Stats(profile), args.tasks, args.top)
        redis_commands(server, args.tasks)

        # The same queue now holds tasks + 1 messages: one child drains them.
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        done = consume(app)
        profile.disable()
        elapsed = time.perf_counter() - started
        print(f"\nconsume: {done:,} tasks, {done / elapsed:,.0f}/s under cProfile (one child)")
        show("one child's consume loop", pstats.Stats(profile), done, args.top)
        redis_commands(server, done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
