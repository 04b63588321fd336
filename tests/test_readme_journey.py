"""A new user's first hour: the worker commands the examples print serve the queues of
their tasks, the operations example runs against a real worker, and the public functions
of the modules a user reaches first each have an example somewhere they will look.

tests/test_examples.py runs the examples' own scripts and the README's Quickstart; this
file covers what a reader copies from the examples' docstrings and what it finds there.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.conftest import ROOT, Ledger, WorkerProcesses

EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
SHOP = EXAMPLES / "shop"


def example_worker_commands(folder: Path) -> list[tuple[str, list[str]]]:
    """Every `celeriac -A tasks worker ...` line in one example's files: (file, words)."""
    found = []
    for path in sorted([*folder.glob("*.py"), *folder.glob("*.md")]):
        text = path.read_text(encoding="utf-8")
        for line in re.findall(r"celeriac -A tasks worker[^`#\n)\"']*", text):
            found.append((path.name, shlex.split(line)))
    return found


def served_queues(words: list[str]) -> set[str]:
    """The queues a `celeriac worker` command line consumes (-Q, else the default)."""
    for flag in ("-Q", "--queues"):
        if flag in words:
            return set(words[words.index(flag) + 1].split(","))
    return {"default"}


def task_queues(folder: Path) -> dict[str, str]:
    """Each task of the example's app and the queue it is sent to, read in a subprocess
    (every example's module is named tasks)."""
    code = (
        "import json, tasks\n"
        "app = tasks.app\n"
        "print(json.dumps({name: task.options.queue or app.conf.task_default_queue\n"
        "                  for name, task in app.tasks.items()\n"
        "                  if not name.startswith('celeriac.')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CELERIAC_BROKER_URL"}
    env["CELERIAC_BROKER_URL"] = "memory://"
    env["PYTHONPATH"] = str(folder)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    queues: dict[str, str] = json.loads(done.stdout)
    return queues


@pytest.mark.parametrize(
    "folder", sorted(p.parent for p in EXAMPLES.glob("*/tasks.py")), ids=lambda p: p.name
)
def test_every_worker_command_in_an_example_serves_its_tasks_queues(folder: Path) -> None:
    """A worker started as an example says would leave a task on another queue waiting:
    examples/shop said `celeriac -A tasks worker -c 2`, and `python send.py` then timed
    out, its tasks on queue emails."""
    commands = example_worker_commands(folder)
    assert commands, f"{folder.name}: no worker command to start"
    queues = task_queues(folder)
    assert queues, f"{folder.name}: no tasks found"
    wrong = [
        f"{where}: {shlex.join(words)} leaves {name} (queue {queue!r}) waiting"
        for where, words in commands
        for name, queue in sorted(queues.items())
        if queue not in served_queues(words)
    ]
    assert not wrong, "\n".join(wrong)


def run_example(
    script: str | list[str], folder: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT ...`` (or ``-m``/``-c`` and their argument) in ``folder``."""
    args = script if isinstance(script, list) else [script]
    return subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_the_operate_example_runs_against_a_real_worker(broker_url: str, tmp_path: Path) -> None:
    """examples/shop/operate.py as its docstring says: the worker first, then the script."""
    env = {**os.environ, "CELERIAC_BROKER_URL": broker_url, "PYTHONPATH": str(SHOP)}
    procs = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start("-c", "2", "-Q", "emails,default", app="tasks", env={"PYTHONPATH": str(SHOP)})
        done = run_example("operate.py", SHOP, env)
        assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{procs.log_text()}"
        assert done.stdout.splitlines() == [
            "queues served: ['default', 'emails']",
            "registered: ['tasks.send_receipt', 'tasks.send_welcome']",
            "healthy here: 1 of 1",
            "revoked: ['REVOKED', 'REVOKED']",
            "second send handed the first: True",
            "purged: 3",
            "key was held by the purged task: True",
            "welcome e-mail sent to user 3",
        ]
        # The script purged its own queue only, and the tasks it revoked never ran.
        status = subprocess.run(
            [sys.executable, "-m", "celeriac", "status", "--json"],
            cwd=SHOP,
            env=env,
            text=True,
            capture_output=True,
            timeout=60,
            check=True,
        )
        counts = {q["queue"]: q for q in json.loads(status.stdout)["queues"]}
        parked = counts.get("operate-example", {"ready": 0, "delayed": 0})
        assert (parked["ready"], parked["delayed"]) == (0, 0), counts
        assert "send_welcome" in procs.log_text()
    finally:
        procs.kill_all()


# Functions of these modules that only a worker calls: they read and answer the control
# streams. They have docstrings; a user has no reason to call them (see the report that
# proposes an __all__ for celeriac.control).
WORKER_SIDE = {
    "celeriac.control.read_revocations",
    "celeriac.control.read_revocations_counted",
    "celeriac.control.reply",
}


def public_functions(module_name: str) -> list[tuple[str, object]]:
    """A module's ``__all__``, else the functions it defines without a leading underscore."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and inspect.isfunction(value)
            and value.__module__ == module_name
        ]
    return [(f"{module_name}.{name}", getattr(module, name)) for name in names]


def test_the_functions_a_user_reaches_first_have_an_example() -> None:
    """The project's rule: every public function has a docstring and an example, in its
    docstring, the README or examples/ (celeriac.__all__ is checked by test_examples)."""
    shown = README.read_text(encoding="utf-8") + "".join(
        p.read_text(encoding="utf-8") for p in EXAMPLES.rglob("*.py")
    )
    missing = []
    for module_name in (
        "celeriac.testing",
        "celeriac.control",
        "celeriac.beat",
        "celeriac.middleware.dedupe",
    ):
        for qualified, obj in public_functions(module_name):
            if qualified in WORKER_SIDE or inspect.isclass(obj):
                continue  # classes: the types these functions take and return
            doc = inspect.getdoc(obj) or ""
            name = qualified.rsplit(".", 1)[1]
            if not doc:
                missing.append(f"{qualified}: no docstring")
            elif "Example" not in doc and not re.search(rf"\b{re.escape(name)}\b", shown):
                missing.append(f"{qualified}: no example in its docstring, README or examples/")
    assert not missing, "\n".join(missing)


# -- a task defined in the script being run ----------------------------------------------


def test_a_task_of_a_module_run_with_python_m_has_the_name_the_worker_gives_it(
    tmp_path: Path,
) -> None:
    """``python -m pkg.jobs`` sent its tasks as ``jobs.add`` while ``celeriac -A pkg.jobs
    worker`` registers ``pkg.jobs.add``: the worker never ran them."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "jobs.py").write_text(
        "from celeriac import Celeriac\n"
        "app = Celeriac('pkg', broker='memory://')\n"
        "@app.task\n"
        "def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
        "if __name__ == '__main__':\n"
        "    print(add.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(tmp_path)])}
    done = run_example(["-m", "pkg.jobs"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pkg.jobs.add"


def test_a_task_defined_where_no_worker_can_import_it_says_so_when_its_wait_times_out(
    tmp_path: Path,
) -> None:
    """A task defined in ``python -c``, a REPL or a notebook is named ``__main__.NAME``: no
    worker can import it, and waiting for it timed out with no word of why."""
    code = (
        "from celeriac import Celeriac, ResultTimeout\n"
        "app = Celeriac('repl')\n"
        "@app.task\n"
        "def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
        "try:\n"
        "    add.delay(1, 2).get(timeout=0.1)\n"
        "except ResultTimeout as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("CELERIAC_BROKER_URL", None)
    done = run_example(["-c", code], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "__main__.add" in done.stdout
    assert "no worker can import it" in done.stdout
    assert "-A" in done.stdout


def test_a_worker_given_a_task_of_no_module_says_why_it_cannot_run_it(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    """The worker's log line for an unknown task names the cause when the name is one no
    worker can import (``__main__.NAME``), instead of only "deploy the code"."""
    workers.start("-c", "1", env={"CELERIAC_TASK_UNKNOWN_RETRY_DELAY": "0.2"})
    core_app.send_task("__main__.add", args=(1, 2))
    assert wait_for(lambda: "__main__.add[" in workers.log_text(), timeout=30)
    line = next(x for x in workers.log_text().splitlines() if "__main__.add[" in x)
    assert "not registered in this worker" in line and "no worker can import it" in line, line


# -- a worker started in another folder ----------------------------------------------------


def test_a_worker_on_the_default_sqlite_file_names_the_file_it_opened(tmp_path: Path) -> None:
    """The default broker, sqlite:///celeriac.db, is relative to each process's folder. A
    worker started in another folder than its producers (its module found on PYTHONPATH or
    installed) logged only "broker sqlite:///celeriac.db", created a file of its own and
    waited there while the tasks queued in the other file."""
    from tests.test_examples import celeriac_cli, started

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "tasks.py").write_text(
        "from celeriac import Celeriac\napp = Celeriac('shop')\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CELERIAC_BROKER_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(tmp_path / "project")])
    log = tmp_path / "worker.log"
    probe = Celeriac("probe", broker=f"sqlite:///{elsewhere}/celeriac.db")
    try:
        with started(celeriac_cli("-A", "tasks", "worker", "-c", "1"), elsewhere, env, log):
            assert wait_for(probe.broker.workers, timeout=30), log.read_text()
    finally:
        probe.broker.close()
    (line,) = [x for x in log.read_text().splitlines() if "starting" in x]
    assert f"the file {elsewhere / 'celeriac.db'}" in line, line


# -- the two set-up commands on Debian's own Python ---------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"
MANAGED = (
    "import ensurepip, os, sys, sysconfig\n"  # ensurepip: a venv can be made without apt
    "marker = os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')\n"
    "sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)\n"
)


def _refuses_pip(python: str) -> bool:
    if not os.path.exists(python):
        return False
    done = subprocess.run([python, "-c", MANAGED], capture_output=True, timeout=60, check=False)
    return done.returncode == 0


@pytest.mark.skipif(
    not _refuses_pip(SYSTEM_PYTHON),
    reason=f"no {SYSTEM_PYTHON} that refuses pip installs (PEP 668) here",
)
def test_the_setup_commands_install_into_a_venv_with_debians_own_python(tmp_path: Path) -> None:
    """On a fresh Debian machine python3 is Debian's 3.11, whose pip refuses to install
    outside a virtual environment ("externally-managed-environment"): `bash scripts/demo`
    and `bash scripts/test` stopped at their first line of work."""
    for script in ("demo", "test"):
        text = (ROOT / "scripts" / script).read_text(encoding="utf-8")
        assert text.index("source scripts/python-env.sh") < text.index("pip install"), script
    (tmp_path / "scripts").mkdir()
    helper = (ROOT / "scripts" / "python-env.sh").read_text(encoding="utf-8")
    (tmp_path / "scripts" / "python-env.sh").write_text(helper)
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    shell = "source scripts/python-env.sh; command -v python3; python3 -m pip --version"
    done = subprocess.run(
        ["bash", "-c", shell],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    python, pip = done.stdout.splitlines()
    assert python == str(tmp_path / ".venv" / "bin" / "python3")
    assert str(tmp_path / ".venv") in pip
