"""``celeriac demo``: a worker on a temporary SQLite file and a showcase workload."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from celeriac.cli.main import cli, out
from celeriac.errors import CeleriacError
from celeriac.parent import stop_with_parent


@cli.command()
@click.option(
    "-n",
    "--tasks",
    "count",
    type=click.IntRange(1, 100_000),
    default=300,
    show_default=True,
    help="Tasks in the first batch.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Child processes of the demo's worker.",
)
def demo(count: int, concurrency: int) -> None:
    """Start a worker on a temporary SQLite broker, run a showcase workload, stop it.

    Example: celeriac demo -n 1000 -c 4
    """
    folder = Path(tempfile.mkdtemp(prefix="celeriac-demo-"))
    url = f"sqlite:///{folder}/demo.db"
    os.environ["CELERIAC_BROKER_URL"] = url
    from celeriac.cli import demo_tasks

    demo_tasks.app.conf.broker_url = url
    out.print(f"[bold]celeriac demo[/]: broker {url}, worker with {concurrency} children")
    log = folder / "worker.log"
    worker = _start_worker(concurrency, url, log)
    try:
        _wait_for_worker(worker, log)
        summary = _showcase(count)
    except (CeleriacError, TimeoutError) as exc:
        out.print(f"[red]demo failed:[/] {escape(str(exc))}\nworker log: {escape(str(log))}")
        sys.exit(1)
    finally:
        # Whatever ends the demo (Ctrl-C, a `kill -INT` of this process alone, an error
        # from a task): its worker stops too. Only these two errors stopped it, and the
        # worker was left running on the temporary broker after anything else.
        _stop(worker)
    table = Table(title="what happened")
    table.add_column("step")
    table.add_column("result")
    for step, outcome in summary:
        table.add_row(step, outcome)
    out.print(table)
    # The broker's files go (a demo a day left a folder of them in /tmp each time); the
    # log stays, to read. A failed demo keeps everything, as it was.
    for leftover in folder.glob("demo.db*"):
        leftover.unlink(missing_ok=True)
    out.print(f"worker stopped cleanly. Its log: {escape(str(log))} (the demo's broker is deleted)")


def _start_worker(concurrency: int, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CELERIAC_BROKER_URL": url}
    command = [
        sys.executable,
        "-m",
        "celeriac",
        "-A",
        "celeriac.cli.demo_tasks",
        "worker",
        "-c",
        str(concurrency),
        "-l",
        "info",
    ]
    with log.open("wb") as output:
        return subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            # A demo killed with SIGKILL runs no `finally`: its worker polled a temporary
            # broker for good. The worker now stops with it (no thread runs here yet).
            preexec_fn=functools.partial(stop_with_parent, os.getpid()),  # noqa: PLW1509
        )


def _wait_for_worker(worker: subprocess.Popen[bytes], log: Path) -> None:
    from celeriac.cli.demo_tasks import app

    deadline = time.monotonic() + 30
    while not app.broker.workers():
        if worker.poll() is not None:
            raise CeleriacError(f"the worker exited at start-up:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not start within 30 s")
        time.sleep(0.05)


def _showcase(count: int) -> list[tuple[str, str]]:
    from celeriac.cli.demo_tasks import (
        charge_card,
        nightly_report,
        page_on_call,
        resize_image,
        send_reminder,
    )

    summary: list[tuple[str, str]] = []
    reminder = send_reminder.apply_async((7,), countdown=2)
    reminder_sent = time.time()

    started = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        sending = progress.add_task(f"sending {count} resize_image tasks", total=count)
        results = []
        for image_id in range(count):
            results.append(resize_image.delay(image_id))
            progress.advance(sending)
        running = progress.add_task("running them", total=count)
        for r in results:
            r.get(timeout=120)
            progress.advance(running)
    elapsed = time.perf_counter() - started
    summary.append(
        (
            f"{count} resize_image tasks",
            f"all SUCCESS in {elapsed:.2f}s ({count / elapsed:,.0f} tasks/s, sent and run)",
        )
    )

    failing = charge_card.delay(1001)
    try:
        failing.get(timeout=30)
        summary.append(("a failing task", "[red]did not fail?[/]"))
    except ValueError as exc:
        summary.append(
            (
                "a failing task",
                f"{failing.state}: get() re-raised "
                f"ValueError('{exc}') with the worker's traceback attached",
            )
        )

    summary.append(_priority_showcase(nightly_report, page_on_call))

    ran_at: float = reminder.get(timeout=30)
    summary.append(("countdown=2 task", f"ran {ran_at - reminder_sent:.2f}s after it was sent"))
    return summary


def _priority_showcase(backlog_task: Any, urgent_task: Any) -> tuple[str, str]:
    backlog = [backlog_task.delay(i) for i in range(200)]
    urgent = [urgent_task.apply_async((i,), priority=9) for i in range(10)]
    urgent_done = max(r.get(timeout=60) for r in urgent)
    backlog_done = [r.get(timeout=120) for r in backlog]
    after = sum(1 for t in backlog_done if t > urgent_done)
    return (
        "priority=9 sent behind 200 queued tasks",
        f"all 10 finished while {after} of the 200 were still waiting",
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
