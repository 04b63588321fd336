"""One adapter module per system; see :mod:`benchmarks.adapters.base` for the contract.

Each module imports only its own system (plus redis and psutil), so it loads in that
system's interpreter: celeriac in a venv of its own (an editable install of the work tree),
arq in another (it needs redis<6), every other peer in the shared peers' venv.
"""

from __future__ import annotations

#: Every system, in the order tables list them.
SYSTEMS = ("celeriac", "celery", "dramatiq", "huey", "rq", "arq", "taskiq")

#: The venv (under benchmarks/.peers-venv/, made by scripts/bench) that holds each system;
#: None would mean the runner's own interpreter.
VENVS: dict[str, str | None] = {
    "celeriac": "celeriac",
    "celery": "main",
    "dramatiq": "main",
    "huey": "main",
    "rq": "main",
    "arq": "arq",
    "taskiq": "main",
}

#: Systems with an asyncio worker, compared on I/O-bound tasks.
ASYNC_SYSTEMS = ("celeriac", "arq", "taskiq")
