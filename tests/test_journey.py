"""What a new user evaluating celeriac met in an hour with the README, the examples and
the command line: ``beat list`` and ``beat add`` behaved as the scheduler (the Redis
persistence warning on every listing), a running task was described as "still queued",
an option had no help, and public methods (map, starmap, chunks, clone, successful,
summary, forget, aapply_async) had no example."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from celeriac.cli import cli
from tests.conftest import ROOT, Ledger, WorkerProcesses, run_celeriac
from tests.redis_server import RedisServer


def test_beat_subcommands_leave_the_persistence_warning_to_the_scheduler(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # `beat list` counted as `beat`, the scheduler: every listing on a Redis without
    # persistence printed the warning that `status` and `dlq list` leave to workers.
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"  # the session's: no AOF
    for args in (
        ("beat", "add", "tick", "shop.tasks.tick", "--every", "1h"),
        ("beat", "list"),
    ):
        done = run_celeriac("-b", url, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "persistence off" not in done.stderr, args
    debug = run_celeriac("-b", url, "--debug", "beat", "list", cwd=tmp_path)
    assert "has persistence off" in debug.stderr  # still there for those who ask


def test_revoke_and_result_say_an_id_with_nothing_stored_may_be_running(
    tmp_path: Path,
) -> None:
    # A running task has no state stored. Revoked without --terminate, it finished and
    # stored SUCCESS, after a note that said it was "still queued" and "will not run".
    url = f"sqlite:///{tmp_path}/broker.db"
    task_id = str(uuid.uuid4())
    revoked = CliRunner().invoke(cli, ["-b", url, "revoke", task_id], catch_exceptions=False)
    assert revoked.exit_code == 0, revoked.output
    said = " ".join(revoked.stderr.split())
    assert "or it is running" in said
    assert "if it is running, it finishes (--terminate stops it)" in said
    terminated = CliRunner().invoke(
        cli, ["-b", url, "revoke", "--terminate", task_id, "other-id"], catch_exceptions=False
    )
    assert "if it is running, it is stopped" in " ".join(terminated.stderr.split())
    pending = CliRunner().invoke(cli, ["-b", url, "result", "never-sent"], catch_exceptions=False)
    assert pending.exit_code == 0, pending.output
    assert "queued or running" in " ".join(pending.stdout.split())


def _every_command(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        found.append((f"{ctx.command_path} {name}", command))
        if isinstance(command, click.Group):
            sub = click.Context(command, info_name=name, parent=ctx)
            found += _every_command(command, sub)
    return found


def test_every_option_of_every_command_says_what_it_does() -> None:
    # `celeriac result --help` listed "--timeout SECONDS  [default: 60.0; x>=0]" and
    # nothing else: which wait it bounds was left to guess.
    root = click.Context(cli, info_name="celeriac")
    bare = [
        f"{path} {'/'.join(param.opts)}"
        for path, command in _every_command(cli, root)
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert not bare, bare


@pytest.mark.slow
def test_the_results_example_runs_against_a_real_worker(tmp_path: Path) -> None:
    # The shop example had no use of map, starmap, chunks, clone, successful, summary,
    # forget or aapply_async: examples/shop/results.py shows them, and must run as written.
    shop = ROOT / "examples" / "shop"
    url = f"sqlite:///{tmp_path}/broker.db"
    procs = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start("-c", "2", "-Q", "emails,default", app="tasks", env={"PYTHONPATH": str(shop)})
        env = {**os.environ, "CELERIAC_BROKER_URL": url, "PYTHONPATH": str(shop)}
        done = subprocess.run(
            [sys.executable, "results.py"],
            cwd=shop,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr + procs.log_text()
        welcome = "welcome e-mail sent to user"
        assert done.stdout.splitlines() == [
            str([f"{welcome} {u}" for u in (1, 2, 3)]),
            "all sent: True SUCCESS",
            "['receipt for order 1001 sent', 'receipt for order 1002 sent (copy to accounting)']",
            str([[f"{welcome} 4", f"{welcome} 5"], [f"{welcome} 6", f"{welcome} 7"]]),
            "receipt for order 1003 sent (copy to accounting) | succeeded: True",
            "after forget(): PENDING",
            f"{welcome} 8",
            str([f"{welcome} 9", f"{welcome} 10"]),
        ]
    finally:
        procs.kill_all()
