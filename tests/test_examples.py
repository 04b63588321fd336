"""The examples are real: run them, and the README's code, as a user would.

Each example runs its own script against a real worker on SQLite and on Redis; the
README's Quickstart runs as written (tasks.py, the worker command, the client lines, the
CLI commands it names) on the default SQLite file, and its other blocks run in-process.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click
import psutil
import pytest

from celeriac import Celeriac
from celeriac.beat import Cron
from celeriac.cli.main import cli
from celeriac.config import Settings
from celeriac.testing import run_queued, wait_for
from tests.conftest import ROOT, Ledger, WorkerProcesses

EXAMPLES = ROOT / "examples"
SHOP = EXAMPLES / "shop"
ETL = EXAMPLES / "etl"
PERIODIC = EXAMPLES / "periodic"
ORDERS = EXAMPLES / "orders"
README = ROOT / "README.md"


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; its output is kept for the assertion's message."""
    return subprocess.run(
        args, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout, check=False
    )


def pytest_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` without the variables of the pytest-xdist worker this test runs in: a pytest
    started with them takes itself for a worker (pytest-benchmark then warns, an error here)."""
    return {k: v for k, v in base.items() if not k.startswith("PYTEST_XDIST_")}


def celeriac_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "celeriac", *args]


def ok(done: subprocess.CompletedProcess[str], logs: str = "") -> str:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}{done.stderr}{logs}"
    return done.stdout


# -- examples/shop --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_shop_example_runs_against_a_real_worker(broker_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "CELERIAC_BROKER_URL": broker_url, "PYTHONPATH": str(SHOP)}
    procs = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start("-c", "2", "-Q", "emails,default", app="tasks", env={"PYTHONPATH": str(SHOP)})
        out = ok(run([sys.executable, "send.py"], SHOP, env), procs.log_text())
        assert out.splitlines() == [
            "welcome e-mail sent to user 42",
            "receipt for order 1001 sent (copy to accounting)",
            "state: SUCCESS",
            "welcome e-mail sent to user 7",
        ]
    finally:
        procs.kill_all()


def test_the_testing_example_passes() -> None:
    done = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tasks.py"],
        SHOP,
        pytest_env({**os.environ, "PYTHONPATH": str(SHOP)}),
    )
    assert "1 passed" in ok(done)


# -- examples/etl ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_etl_pipeline_loads_the_sample_file_and_can_run_again(
    broker_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "CELERIAC_BROKER_URL": broker_url, "PYTHONPATH": str(ETL)}
    procs = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    expected = [
        "loaded 6 rows into warehouse.db",
        "CH: 1 orders, 9.90",
        "GB: 2 orders, 61.98",
        "US: 3 orders, 378.95",
    ]
    try:
        procs.start(app="tasks", env={"PYTHONPATH": str(ETL)})
        command = [sys.executable, str(ETL / "run.py"), str(ETL / "sales.csv"), "warehouse.db"]
        assert ok(run(command, tmp_path, env), procs.log_text()).splitlines() == expected
        # Each step is safe to run again: the same file loaded twice gives the same table.
        assert ok(run(command, tmp_path, env), procs.log_text()).splitlines() == expected
    finally:
        procs.kill_all()


# -- examples/periodic ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_periodic_example_and_its_commands_with_two_schedulers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    env = {**os.environ, "CELERIAC_BROKER_URL": url, "PYTHONPATH": str(PERIODIC)}
    procs = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    beat_log = (tmp_path / "beat.log").open("wb")
    # The README's two ways at once: a worker with a scheduler inside, and one alone.
    scheduler = subprocess.Popen(
        celeriac_cli("-A", "tasks", "beat"),
        cwd=PERIODIC,
        env=env,
        stdout=beat_log,
        stderr=subprocess.STDOUT,
    )
    app = Celeriac("probe", broker=url)
    try:
        procs.start("--beat", "-c", "2", app="tasks", env={"PYTHONPATH": str(PERIODIC)})
        cli = ["-A", "tasks", "beat"]
        added = run(
            celeriac_cli(*cli, "add", "hi", "tasks.say", "--every", "10s", "--args", '["hi"]'),
            PERIODIC,
            env,
        )
        assert ok(added).startswith("added hi: tasks.say every 10s")

        def entries() -> dict[str, Any]:
            listed = ok(run(celeriac_cli(*cli, "list", "--json"), PERIODIC, env))
            return {e["name"]: e for e in json.loads(listed)}

        # 10 s intervals are aligned to the epoch: both entries tick within ~10 s.
        ran = ("hi", "tasks.refresh_rates")
        assert wait_for(
            lambda: all(entries()[name]["last_state"] == "SUCCESS" for name in ran), timeout=40
        ), f"{entries()}\n{procs.log_text()}"
        listed = entries()
        assert set(listed) == {
            "heartbeat-every-30s",
            "hi",
            "month-closed",
            "tasks.nightly_report",
            "tasks.refresh_rates",
            "weekday-digest",
        }
        assert app.AsyncResult(listed["hi"]["last_task_id"]).get(timeout=10) == "hi"
        paused = run(celeriac_cli(*cli, "pause", "hi"), PERIODIC, env)
        assert ok(paused).strip() == "paused hi"
        assert ok(run(celeriac_cli(*cli, "remove", "hi"), PERIODIC, env)).strip() == "removed hi"
        assert "hi" not in entries()
        # Two schedulers were up: each tick ran once (one event per tick id).
        events = ok(run(celeriac_cli("events", "--json", "-n", "1000"), PERIODIC, env))
        runs = Counter(
            e["id"] for e in map(json.loads, events.splitlines()) if e["type"] == "succeeded"
        )
        assert runs and set(runs.values()) == {1}, runs
    finally:
        app.broker.close()
        with suppress(ProcessLookupError):
            scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(timeout=20)
        beat_log.close()
        procs.kill_all()


# -- examples/orders ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_orders_example_runs_against_a_real_worker(broker_url: str, tmp_path: Path) -> None:
    own = {
        "PYTHONPATH": str(ORDERS),
        "ORDERS_DB": str(tmp_path / "orders.db"),
        "ORDERS_AUDIT": str(tmp_path / "audit.log"),
        "ORDERS_EXPORTS": str(tmp_path / "exports"),
    }
    env = {**os.environ, "CELERIAC_BROKER_URL": broker_url, **own}
    procs = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start("-c", "2", "-Q", "payments,default", app="tasks", env=own)
        out = ok(run([sys.executable, "run.py"], ORDERS, env), procs.log_text())
        assert out.splitlines() == [
            "charged 27549 cents in total",
            "['order 1: charged 19.99', 'order 2: charged 250.00', 'order 3: charged 5.50']",
            "exported: ['1,1999', '2,25000', '3,550']",
            "rejected: dead-lettered: rejected by the task: order 99 does not exist",
            "not finished within 0.5s: state PENDING",
            "revoked: state REVOKED",
        ]
        # The Audit middleware saw every committed outcome of charge_order: order 2's two
        # retries, nine charges (three runs of three orders) and the rejected order 99.
        audit = Counter(
            line.split()[0] for line in (tmp_path / "audit.log").read_text().splitlines()
        )
        assert audit == {"SUCCESS": 9, "RETRY": 2, "DEAD": 1}
        letters = json.loads(ok(run(celeriac_cli("dlq", "list", "--json"), ORDERS, env)))
        assert [(d["task"], d["reason"]) for d in letters] == [
            ("tasks.charge_order", "rejected by the task: order 99 does not exist")
        ]
        # A charge was made once per order, however many tasks charged it.
        with_code = run(
            [sys.executable, "-c", "import orders; print(orders.charged_total([1, 2, 3, 99]))"],
            ORDERS,
            env,
        )
        assert ok(with_code).strip() == "27549"
    finally:
        procs.kill_all()


# -- examples/advanced and examples/periodic/manage.py ------------------------------------------

ADVANCED = EXAMPLES / "advanced"

# Each script runs its tasks in its own process (run_queued on the memory broker): what
# it prints, line by line.
IN_PROCESS = {
    "middleware.py": [
        "waiting: {'acme': 1, 'globex': 1}",
        "refused: task middleware.rebuild_report: send it with headers={'tenant': ...}",
        "too large; waiting: {'acme': 1, 'globex': 1}",
        "definition refused: task tenants.nightly: tenant_required must be True or False, "
        "got 'yes'",
        "waiting: {'acme': 2, 'globex': 1}",
        "result: report 1 rebuilt",
        "dead letters: ['unknown task: no worker that knows tenants.retired_report took it "
        "within task_unknown_max_age=0s', 'tenant globex is suspended']",
        "waiting: {'acme': 0, 'globex': 0}",
        "audit: ['acme: middleware.rebuild_report SUCCESS', "
        "'globex: middleware.rebuild_report DEAD', 'acme: tenants.retired_report DEAD']",
    ],
    "signing.py": [
        "on the wire: sig1 + key id + HMAC + msgpack payload",
        "moved 500 cents from account 1",
        "moved 300 cents from account 2",
        "unsigned: FAILURE",
        "pickled: FAILURE",
        "dead-lettered: refused: content type pickle is not in accept_content "
        "['json', 'msgpack']; refused without reading it",
        "dead-lettered: refused: unsigned message refused: this app requires messages "
        "signed with task_signing_key",
    ],
    "producing.py": [
        "not sent: cannot send task producing.send_issue: missing a required argument: "
        "'issue'; the function is send_issue(subscriber_id, issue)",
        "1000 sent; first on queue mail priority 3",
        "sent by name: billing.tasks.invoice PENDING",
        "signature: billing.tasks.remind.s(7) PENDING",
        "count_open.ignores_result: True",
        "apublish: issue-7-to-2000",
        "ran: 1003 | issue 7 sent to 0 | issue 7 sent to 2000",
    ],
    "workflows.py": [
        "before: 0 of 3 waiting on 3",
        "after: 3 ready: True ok: True",
        "winter failed: True 1",  # completed_count: the members that succeeded
        "restored: True",
        "album ready: 600 bytes",
        "winter failed: ChordError (image -5 does not exist)",
    ],
    "tracing.py": [
        "POST /orders/7",
        "  send tracing.reserve_stock PRODUCER",
        "    run tracing.reserve_stock CONSUMER SUCCESS",
        "      UPDATE stock",
        "      send tracing.charge PRODUCER",
        "        run tracing.charge CONSUMER SUCCESS",
        "          POST payments/charge",
        "one trace: True",
        "POST /orders/13",
        "  send tracing.charge PRODUCER",
        "    run tracing.charge CONSUMER FAILURE ERROR",
        "      POST payments/charge ERROR",
        "recorded: ['ValueError']",
        "result: FAILURE",
    ],
    "settings.py": [
        "broker: redis://localhost:6379/0 | soft limit: 120.0",
        "soft limit now: 90.0",
        "chosen, not default: True",
        "unknown setting 'task_soft_time_limt'. Did you mean 'task_soft_time_limit'? "
        "Every setting is listed in celeriac.config.Settings.",
        "setting worker_concurrency must be between 1 and 10000, got 0",
        "from Django's settings: shop 45.0",
        f"{len(dataclasses.fields(Settings))} settings; all given here: True",
    ],
}


@pytest.mark.parametrize("script", sorted(IN_PROCESS))
def test_the_advanced_examples_run_as_their_docstrings_say(script: str, tmp_path: Path) -> None:
    """`python <script>` in examples/advanced, with or without CELERIAC_BROKER_URL set
    (each points its app at memory:// itself, and changes no real broker)."""
    env = {**os.environ, "CELERIAC_BROKER_URL": f"sqlite:///{tmp_path}/untouched.db"}
    assert ok(run([sys.executable, script], ADVANCED, env)).splitlines() == IN_PROCESS[script]
    assert not (tmp_path / "untouched.db").exists()


def test_the_schedule_example_manages_entries_from_python(tmp_path: Path) -> None:
    env = {**os.environ, "CELERIAC_BROKER_URL": f"sqlite:///{tmp_path}/untouched.db"}
    out = ok(run([sys.executable, "manage.py"], PERIODIC, env)).splitlines()
    assert out[:5] == [
        "from code and config: ['heartbeat-every-30s', 'month-closed', 'tasks.nightly_report', "
        "'tasks.refresh_rates', 'weekday-digest']",
        "added: hello every 1m",
        "changed: hello cron 0 8 * * * (Europe/Kyiv)",
        "paused hello | paused: True",
        "resumed hello | paused: False",
    ]
    listed = [line.split() for line in out[5:-1]]
    assert [(row[0], row[1]) for row in listed] == [
        ("heartbeat-every-30s", "config"),
        ("hello", "runtime"),
        ("month-closed", "config"),
        ("tasks.nightly_report", "code"),
        ("tasks.refresh_rates", "code"),
        ("weekday-digest", "config"),
    ]
    assert out[-1] == "removed hello | left: 5"
    assert not (tmp_path / "untouched.db").exists()


def run_beside_a_worker(script: str, broker_url: str, tmp_path: Path, *args: str) -> list[str]:
    """The lines ``python <script>`` prints in examples/advanced, a worker of its app
    (started with ``args``) running beside it, as the script's docstring says."""
    env = {**os.environ, "CELERIAC_BROKER_URL": broker_url, "PYTHONPATH": str(ADVANCED)}
    procs = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start(*args, app=Path(script).stem, env={"PYTHONPATH": str(ADVANCED)})
        return ok(run([sys.executable, script], ADVANCED, env), procs.log_text()).splitlines()
    finally:
        procs.kill_all()


@pytest.mark.slow
def test_the_progress_example_runs_against_a_real_worker(broker_url: str, tmp_path: Path) -> None:
    assert run_beside_a_worker("progress.py", broker_url, tmp_path, "-Q", "imports") == [
        "WAITING_FOR_UPLOAD True ready: False",
        "sum: 42",
        "SUCCESS successful: True info: 42",
        "FAILURE failed: True ValueError",
    ]


@pytest.mark.slow
def test_the_child_resources_example_runs_against_a_real_worker(
    sqlite_url: str, tmp_path: Path
) -> None:
    args = ("-Q", "visits", "-c", "2", "--max-tasks-per-child", "3")
    assert run_beside_a_worker("child_resources.py", sqlite_url, tmp_path, *args) == [
        "recorded: 6",
        "each through its own child's connection: True",
        "children: more than one",
    ]


# -- README.md --------------------------------------------------------------------------------


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """The fenced code blocks (language, code) of one `## section` of the README."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.DOTALL)


@contextmanager
def started(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    """A process and its children, stopped by PID at the end."""
    with log.open("wb") as output:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            for child in children:
                with suppress(psutil.NoSuchProcess):
                    child.kill()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    (_, tasks_py), (_, worker_cmd), (_, client), *_ = readme_blocks("Quickstart")
    assert tasks_py.startswith("# tasks.py\n")
    (tmp_path / "tasks.py").write_text(tasks_py)
    env = {k: v for k, v in os.environ.items() if k != "CELERIAC_BROKER_URL"}
    env["PYTHONPATH"] = str(tmp_path)
    # The command as printed (its comment dropped), with this interpreter's celeriac.
    words = shlex.split(worker_cmd, comments=True)
    assert words[:4] == ["celeriac", "-A", "tasks", "worker"], words
    # No broker URL anywhere: the default, ./celeriac.db, as the README says.
    probe = Celeriac("probe", broker=f"sqlite:///{tmp_path}/celeriac.db")
    with started(celeriac_cli(*words[1:]), tmp_path, env, tmp_path / "worker.log"):
        assert wait_for(probe.broker.workers, timeout=30), (tmp_path / "worker.log").read_text()
        # The client lines, top-level await included, in one process as a user would.
        runner = (
            "import ast, asyncio, sys\n"
            "code = compile(sys.stdin.read(), 'README', 'exec', "
            "flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)\n"
            "namespace = {}\n"
            "async def main():\n"
            "    pending = eval(code, namespace)\n"
            "    if pending is not None:\n"
            "        await pending\n"
            "asyncio.run(main())\n"
            "print(namespace['r'].get(timeout=30))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", runner],
            input=client,
            cwd=tmp_path,
            env=env,
            text=True,
            capture_output=True,
            timeout=90,
            check=False,
        )
        assert ok(done, (tmp_path / "worker.log").read_text()) == "welcome e-mail sent to user 42\n"
        # The commands the text names after it; welcome-42 was sent with countdown=5.
        result = json.loads(
            ok(run(celeriac_cli("result", "welcome-42", "--wait", "--json"), tmp_path, env))
        )
        assert (result["state"], result["result"]) == ("SUCCESS", "welcome e-mail sent to user 42")
        called = run(
            celeriac_cli("-A", "tasks", "call", "tasks.send_welcome", "--args", "[42]", "--wait"),
            tmp_path,
            env,
        )
        assert ok(called).strip() == '"welcome e-mail sent to user 42"'
        status = json.loads(ok(run(celeriac_cli("status", "--json"), tmp_path, env)))
        assert [w["queues"] for w in status["workers"]] == [["emails", "default"]]
        assert json.loads(ok(run(celeriac_cli("dlq", "list", "--json"), tmp_path, env))) == []
        checked = json.loads(ok(run(celeriac_cli("-A", "tasks", "check", "--json"), tmp_path, env)))
        assert "tasks.send_welcome" in json.dumps(checked)
    probe.broker.close()
    assert (tmp_path / "celeriac.db").exists()
    # The README's test, run by pytest against the Quickstart's tasks.py.
    ((_, test_code),) = readme_blocks("Testing your tasks")
    (tmp_path / "test_tasks.py").write_text(test_code)
    pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tasks.py"]
    assert "1 passed" in ok(run(pytest_run, tmp_path, pytest_env(env)))


# What the Workflows block leaves to the reader, on the memory broker.
WORKFLOW_PRELUDE = """
from celeriac import Celeriac
app = Celeriac("readme", broker="memory://", limits={"smtp": "10/s"})
albums = []

@app.task
def extract(path: str) -> list[int]:
    return [1, 2, 3]

@app.task
def transform(rows: list[int]) -> list[int]:
    return [row * 10 for row in rows]

@app.task
def load(rows: list[int]) -> int:
    return sum(rows)

@app.task
def resize(image_id: int) -> int:
    return image_id * 2

@app.task
def make_album(sizes: list[int]) -> None:
    albums.append(sizes)

@app.task
def send_welcome(user_id: int) -> str:
    return f"welcome {user_id}"

@app.task
def sync_account(account_id: int) -> int:
    return account_id

@app.task
def reindex(version: int) -> int:
    return version

ids, users, v = [1, 2, 3], [7, 8], 4
"""


def test_the_readme_workflow_block_is_valid_code() -> None:
    ((language, block),) = readme_blocks("Workflows, schedules and policies")
    assert language == "python"
    namespace: dict[str, Any] = {}
    exec(compile(WORKFLOW_PRELUDE + block, "README", "exec"), namespace)
    app: Celeriac = namespace["app"]
    assert run_queued(app, include_delayed=True) > 0
    assert namespace["albums"] == [[2, 4, 6]] * 2  # each chord's callback (two spellings), once
    assert {"refresh_rates", "call_partner", "send_mail"} <= set(namespace)
    scheduled = {name: entry for name, (entry, *_) in app.beat.static_entries().items()}
    assert {entry.task for entry in scheduled.values()} == {
        namespace["refresh_rates"].name,
        "tasks.digest",
    }
    assert scheduled["digest"].schedule == Cron("0 7 * * *")


def documented_commands() -> list[tuple[str, str]]:
    """Every celeriac command line in the README, the guides in docs/ and examples/ (file
    name, command)."""
    names = set(cli.list_commands(click.Context(cli)))
    found = []
    # The user's guides in docs/; architecture.md and benchmarks.md are records, whose
    # prose names commands in part (`-w` of ping, `call -A` as it once was).
    records = {"architecture.md", "benchmarks.md"}
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in records)
    for path in [
        README,
        *docs,
        *sorted(EXAMPLES.rglob("README.md")),
        *sorted(EXAMPLES.rglob("*.py")),
    ]:
        text = path.read_text(encoding="utf-8")
        # Inline: `celeriac status`, `beat list`, `-P threads -c 50`.
        for span in re.findall(r"`([^`\n]+)`", text):
            first = span.split()[0]
            if first == "celeriac" or first in names:
                found.append((path.name, span))
            elif first == "-P":
                found.append((path.name, f"worker {span}"))
        command = rf"(?<![`\w/.])celeriac (?:-A \S+ )?(?:{'|'.join(names)})\b[^`#\n]*"
        for match in re.findall(command, text):  # in code blocks and docstrings
            found.extend((path.name, part.strip()) for part in match.split("&&"))
    return found


GLOBAL_OPTIONS = {"-A": 1, "--app": 1, "-b": 1, "--broker": 1, "--debug": 0}


def test_the_docs_name_only_commands_options_and_choices_that_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command line is parsed by the CLI itself: an unknown command, option or choice
    fails (ID, NAME... stand for values; a command named without its arguments is fine)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")  # --against wants an existing file
    commands = documented_commands()
    assert len(commands) > 20
    wrong = []
    for where, command in commands:
        text = command.rstrip(").,:").replace("[", "").replace("]", "")
        words = shlex.split(text.rstrip('"') if text.count('"') % 2 else text)
        words = words[1:] if words[0] == "celeriac" else words
        while words and words[0] in GLOBAL_OPTIONS:
            words = words[1 + GLOBAL_OPTIONS[words[0]] :]
        # `inspect active|registered|stats|memory`: each choice in turn.
        for choice in itertools.product(*(w.split("|") for w in words)):
            args = ["x" if w.isupper() and not w.startswith("-") else w for w in choice]
            group: click.Command = cli
            parent = click.Context(cli, info_name="celeriac")
            while (
                isinstance(group, click.Group) and args and args[0] in group.list_commands(parent)
            ):
                name = args.pop(0)
                found = group.get_command(parent, name)
                assert found is not None
                group = found
                parent = click.Context(group, info_name=name, parent=parent)
            try:
                group.make_context(parent.info_name, list(args), parent=parent.parent)
            except click.MissingParameter:
                pass  # `celeriac beat add` named in a sentence
            except click.exceptions.Exit:
                pass  # `celeriac --help`
            except click.UsageError as exc:
                wrong.append(f"{where}: {command!r}: {exc.format_message()}")
    assert not wrong, "\n".join(wrong)


def test_every_public_name_has_a_docstring_and_an_example() -> None:
    import celeriac

    documented = README.read_text(encoding="utf-8") + "".join(
        p.read_text(encoding="utf-8") for p in EXAMPLES.rglob("*.py")
    )
    missing = []
    for name in celeriac.__all__:
        obj = getattr(celeriac, name)
        if callable(obj) and not obj.__doc__:
            missing.append(f"{name}: no docstring")
        if not re.search(rf"\b{re.escape(name)}\b", documented):
            missing.append(f"{name}: in neither the README nor examples/")
    assert not missing, missing


def markdown_table(text: str, after: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after the line ``after``."""
    lines = text.split(f"\n{after}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [row for row in rows if not all(cell and set(cell) <= set("-:") for cell in row)]


def test_the_readme_speed_table_is_the_latest_benchmark_run() -> None:
    """docs/benchmarks.md is rewritten by each `scripts/bench`; the README quotes its run."""
    bench = markdown_table(
        (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"),
        "### Side by side on one Redis (2 worker processes each)",
    )
    systems = [name.lower() for name in bench[0][1:]]

    readme = markdown_table(README.read_text(encoding="utf-8"), "## Speed")
    columns = [name.split()[0].lower() for name in readme[0][1:]]  # "Celery 5.7" -> celery
    shown = {
        row[0]: dict(zip(columns, [cell.replace(",", "") for cell in row[1:]], strict=True))
        for row in readme
    }

    def measured(metric: str) -> dict[str, float]:
        """The medians of the README's systems: "4,063 (3,950-5,203)" -> 4063.0."""
        (row,) = (r for r in bench if r[0] == metric)
        cells = dict(zip(systems, row[1:], strict=True))
        return {s: float(cells[s].split()[0].replace(",", "")) for s in columns}

    drain = measured("drain, -c 2, from worker start (tasks/s)")
    workers = measured("drain: CPU per task, worker processes (µs)")
    redis_cpu = measured("drain: CPU per task, redis-server (µs)")
    single = measured("enqueue, one call each (tasks/s)")
    batch = measured("enqueue, batch API (tasks/s)")
    p50 = measured("enqueue-to-start latency p50 (ms)")
    p99 = measured("enqueue-to-start latency p99 (ms)")
    size = measured("Redis bytes per queued task")
    rss = measured("idle RSS, all worker processes (MiB)")
    pss = measured("idle PSS, all worker processes (MiB)")
    for system in columns:
        assert shown["drain 20,000 no-ops (tasks/s)"][system] == f"{drain[system]:.0f}"
        cpu = workers[system] + redis_cpu[system]
        assert shown["CPU per drained task, workers + Redis (µs)"][system] == f"{cpu:.0f}"
        assert shown["`delay()` one at a time (tasks/s)"][system] == f"{single[system]:.0f}"
        assert shown["batch send of 20,000 (tasks/s)"][system] == f"{batch[system]:.0f}"
        latency = f"{p50[system]:.2f} / {p99[system]:.2f}"
        assert shown["enqueue-to-start latency p50 / p99 (ms)"][system] == latency
        assert shown["Redis bytes per queued task"][system] == f"{size[system]:.0f}"
        memory = f"{rss[system]:.1f} / {pss[system]:.1f}"
        assert shown["idle worker memory, RSS / PSS (MiB)"][system] == memory


def test_every_python_block_of_the_readme_compiles() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:  # the Quickstart's client lines use await at the top level
        compile(block, "README", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
