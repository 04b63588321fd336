"""Task manifests: what a deploy changes for messages already queued.

``celeriac check --export manifest.json`` records every task and its signature;
``celeriac check --against manifest.json`` compares the code now with that record and
lists what would break messages sent by the old code and still in the queue.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import Celeriac

_SKIP = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def build(app: Celeriac) -> dict[str, Any]:
    """Every registered task with its parameters.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task(name="shop.add")
        ... def add(x: int, y: int = 0) -> int:
        ...     return x + y
        >>> build(app)["tasks"]["shop.add"]["params"]
        [{'name': 'x', 'required': True}, {'name': 'y', 'required': False}]
    """
    tasks: dict[str, Any] = {}
    for name, task in sorted(app.tasks.items()):
        params = list(inspect.signature(task.fn).parameters.values())
        if task.bind:
            params = params[1:]
        tasks[name] = {
            "params": [
                {"name": p.name, "required": p.default is inspect.Parameter.empty}
                for p in params
                if p.kind not in _SKIP
            ],
            "var_args": any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params),
            "var_kwargs": any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params),
        }
    return {"app": app.name, "tasks": tasks}


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in ``new`` would break messages that ``old`` code sent and that are still queued.

    Example:
        >>> old = {"tasks": {"t": {"params": [{"name": "x", "required": True}]}}}
        >>> breaking_changes(old, {"tasks": {}})
        ['t: removed; queued messages for it will be dead-lettered after task_unknown_max_age']
    """
    problems: list[str] = []
    for name, before in old.get("tasks", {}).items():
        after = new.get("tasks", {}).get(name)
        if after is None:
            problems.append(
                f"{name}: removed; queued messages for it will be dead-lettered "
                "after task_unknown_max_age"
            )
            continue
        problems += [f"{name}: {p}" for p in _compare(before, after)]
    return problems


def _compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old_names = [p["name"] for p in before["params"]]
    new_params = after["params"]
    new_names = [p["name"] for p in new_params]
    problems = []
    for p in new_params:
        if p["required"] and p["name"] not in old_names:
            problems.append(
                f"new required parameter {p['name']!r}: old messages lack it and "
                "will fail; give it a default"
            )
    common = [n for n in old_names if n in new_names]
    if common != [n for n in new_names if n in old_names]:
        problems.append(
            f"parameters reordered ({', '.join(old_names)} -> {', '.join(new_names)})"
            ": positional arguments in old messages land in the wrong place"
        )
    for n in old_names:
        if n not in new_names and not after.get("var_kwargs"):
            problems.append(
                f"parameter {n!r} removed: old messages passing it by keyword lose "
                "it (dropped with a warning); positionally they fail"
            )
    return problems
