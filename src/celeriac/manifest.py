"""Task manifests: what a deploy changes for messages already queued.

``celeriac check --export manifest.json`` records every task and its signature;
``celeriac check --against manifest.json`` compares the code now with that record and
lists what would break messages sent by the old code and still in the queue.

A manifest is a JSON object::

    {"app": "shop", "tasks": {"shop.ship": {
        "params": [{"name": "order_id", "required": true, "kind": "positional_or_keyword"}],
        "var_args": false, "var_kwargs": false, "queue": "shipping"}}}

``params`` are in signature order, without ``*args`` and ``**kwargs``, so a parameter's
position is its index among the parameters that are not keyword-only. ``kind`` is
``positional_only``, ``positional_or_keyword`` or ``keyword_only``. Manifests exported
before kinds were recorded lack it: such a parameter is compared as positional-or-keyword,
since old messages may have passed it either way, and a finding that depends on its kind
says so. ``queue`` is the queue the task's definition names, or the app's default queue
when neither it nor ``task_routes`` names one; it is left out when ``task_routes`` may
choose it (a router can look at the arguments), and manifests exported before it was
recorded lack it.

What it compares is the old code's messages reaching new workers. A message that no
longer fits the function (a new required parameter, one removed that it passes by
position) is not run by a new worker: it is put back for a worker of the old code, then
dead-lettered after ``task_unknown_max_age``. The other way round, during a rolling
deploy, a new producer passing a new parameter *positionally* to a worker still on the old
code is put back the same way (by keyword it is dropped with a warning): upgrade the
workers before the producers, or pass new parameters by keyword.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

_SKIP = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional_only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
}
_EITHER = "positional_or_keyword"  # the kind assumed when an old manifest does not say
#: What a new worker does with an old message that does not fit the function.
_NOT_RUN = (
    "new workers put them back for a worker of the old code, then dead-letter them after "
    "task_unknown_max_age"
)


def build(app: Celeriac) -> dict[str, Any]:
    """Every registered task with its parameters, their kinds, in signature order.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task(name="shop.add")
        ... def add(x: int, *, y: int = 0) -> int:
        ...     return x + y
        >>> for param in build(app)["tasks"]["shop.add"]["params"]:
        ...     print(param)
        {'name': 'x', 'required': True, 'kind': 'positional_or_keyword'}
        {'name': 'y', 'required': False, 'kind': 'keyword_only'}
    """
    tasks: dict[str, Any] = {}
    for name, task in sorted(app.tasks.items()):
        params = list(inspect.signature(task.fn).parameters.values())
        if task.bind:
            params = params[1:]
        queue = task.options.queue
        if queue is None and app.conf.routing is None:
            queue = app.conf.task_default_queue
        tasks[name] = {
            "params": [
                {
                    "name": p.name,
                    "required": p.default is inspect.Parameter.empty,
                    "kind": _KINDS[p.kind],
                }
                for p in params
                if p.kind not in _SKIP
            ],
            "var_args": any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params),
            "var_kwargs": any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params),
            **({"queue": queue} if queue is not None else {}),
        }
    return {"app": app.name, "tasks": tasks}


def validate(data: Any, source: str) -> dict[str, Any]:
    """Return ``data`` if it has the shape of a manifest, else say what is wrong where.

    ``kind``, ``required``, ``var_args``, ``var_kwargs`` and ``queue`` may be missing
    (older manifests lack ``kind`` and ``queue``), but when present they must have the
    right type.

    Raises:
        ConfigurationError: naming ``source`` and the first part that is wrong.

    Example:
        >>> validate({"tasks": {"t": {"params": [{"name": "x"}]}}}, "old.json")["tasks"]
        {'t': {'params': [{'name': 'x'}]}}
        >>> validate([1, 2], "old.json")
        Traceback (most recent call last):
        ...
        celeriac.errors.ConfigurationError: old.json is not a celeriac manifest: the top level ...
    """
    if not isinstance(data, dict):
        raise _malformed(source, f"the top level is {_json_type(data)}, not an object")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        raise _malformed(source, f"'tasks' is {_json_type(tasks)}, not an object")
    for name, task in tasks.items():
        _validate_task(task, f"tasks[{name!r}]", source)
    return data


def _validate_task(task: Any, where: str, source: str) -> None:
    if not isinstance(task, dict):
        raise _malformed(source, f"{where} is {_json_type(task)}, not an object")
    for flag in ("var_args", "var_kwargs"):
        if not isinstance(task.get(flag, False), bool):
            raise _malformed(source, f"{where}.{flag} is {_json_type(task[flag])}, not a boolean")
    if not isinstance(task.get("queue", ""), str):
        raise _malformed(source, f"{where}.queue is {_json_type(task['queue'])}, not a string")
    params = task.get("params")
    if not isinstance(params, list):
        raise _malformed(source, f"{where}.params is {_json_type(params)}, not an array")
    for index, param in enumerate(params):
        at = f"{where}.params[{index}]"
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise _malformed(source, f"{at} is not an object with a 'name' string")
        if not isinstance(param.get("required", False), bool):
            raise _malformed(source, f"{at}.required is not a boolean")
        if param.get("kind", _EITHER) not in _KINDS.values():
            raise _malformed(
                source, f"{at}.kind is {param['kind']!r}, not one of {sorted(_KINDS.values())}"
            )


def _malformed(source: str, what: str) -> ConfigurationError:
    return ConfigurationError(
        f"{source} is not a celeriac manifest: {what} (write one with `celeriac check --export`)"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "missing or null"
    kinds = ((bool, "a boolean"), (int | float, "a number"), (str, "a string"))
    for kind, name in (*kinds, (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return f"a Python {type(value).__name__}"  # not from JSON: validate() called directly


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in ``new`` would break messages that ``old`` code sent and that are still queued.

    Example:
        >>> old = {"tasks": {"t": {"params": [{"name": "x", "required": True}]}}}
        >>> breaking_changes(old, {"tasks": {}})
        ['t: removed; queued messages for it will be dead-lettered after task_unknown_max_age']
        >>> new = {"tasks": {"t": {"params": [{"name": "x", "kind": "keyword_only"}]}}}
        >>> breaking_changes(old, new)
        ["t: parameter 'x' became keyword-only: old messages passing it positionally do not ..."]
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
    return [
        *_requeued(before, after),
        *_new_required(before, after),
        *_inserted(before, after),
        *_moved(before, after),
        *_kind_changes(before, after),
        *_removed(before, after),
    ]


def _unrecorded(param: dict[str, Any], now: str | None, kind: str = "keyword_only") -> str:
    """The caveat for a finding that holds unless an old parameter already had ``kind``."""
    if "kind" in param or now != kind:
        return ""
    return (
        f" (unless {param['name']!r} was {kind.replace('_', '-')} already: the old manifest "
        "predates recorded parameter kinds; export it again with this celeriac from the code "
        "now running to know)"
    )


def _positional(task: dict[str, Any]) -> list[str]:
    """Names of the parameters an old message can fill by position, in slot order."""
    return [p["name"] for p in task["params"] if p.get("kind", _EITHER) != "keyword_only"]


def _requeued(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    # Messages already in the old queue stay there: a worker that consumes only the new
    # one never sees them, and `celeriac status` says so only once they wait.
    was, now = before.get("queue"), after.get("queue")
    if not isinstance(was, str) or not isinstance(now, str) or was == now:
        return []
    return [
        f"moved from queue {was!r} to {now!r}: messages already queued in {was!r} wait there; "
        f"keep a worker consuming {was!r} (-Q {now},{was}) until `celeriac peek {was}` shows "
        "none of them"
    ]


def _new_required(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old_required = {p["name"]: p.get("required") for p in before["params"]}
    problems = []
    for p in after["params"]:
        if not p.get("required"):
            continue
        if p["name"] not in old_required:
            problems.append(
                f"new required parameter {p['name']!r}: old messages lack it, and {_NOT_RUN}; "
                "give it a default"
            )
        elif old_required[p["name"]] is False:
            # ship(order_id, carrier="dhl") -> ship(order_id, carrier): an old ship.delay(7)
            # fails with TypeError on the new workers.
            problems.append(
                f"parameter {p['name']!r} became required: old messages that left it out "
                f"do not fit, and {_NOT_RUN}; keep its default"
            )
    return problems


def _inserted(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    # A new parameter in a slot that old messages fill by position takes their argument:
    # ship(order_id, carrier) -> ship(order_id, priority=False, carrier) makes an old
    # ship(7, "ups") set priority="ups".
    old_params = {p["name"]: p for p in before["params"]}
    old_slots = _positional(before)
    now = {p["name"]: p.get("kind", _EITHER) for p in after["params"]}
    reach = None if before.get("var_args") else len(old_slots)  # *args fills every slot
    problems = []
    for slot, name in enumerate(_positional(after)[:reach]):
        if name in old_params:
            continue
        meant = old_slots[slot] if slot < len(old_slots) else None
        caveat = _unrecorded(old_params[meant], now.get(meant)) if meant else ""
        problems.append(
            f"new parameter {name!r} inserted at position {slot}: old messages' positional "
            f"argument {slot} (meant for {repr(meant) if meant else '*args'}) now sets it; add "
            f"new parameters after the old ones or make them keyword-only{caveat}"
        )
    return problems


def _moved(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    new_slots = _positional(after)
    problems = []
    for slot, name in enumerate(_positional(before)):
        if name not in new_slots:
            continue  # removed or now keyword-only: _removed and _kind_changes say so
        if new_slots.index(name) != slot:
            problems.append(
                f"parameter {name!r} moved from position {slot} to {new_slots.index(name)}: "
                "positional arguments in old messages land in the wrong parameters"
            )
    return problems


def _kind_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    now = {p["name"]: p.get("kind", _EITHER) for p in after["params"]}
    fails = "land in *args" if after.get("var_args") else f"do not fit, and {_NOT_RUN}"
    problems = []
    for param in before["params"]:
        name, was, kind = param["name"], param.get("kind"), now.get(param["name"])
        if kind == "keyword_only" and was != "keyword_only":
            problems.append(
                f"parameter {name!r} became keyword-only: old messages passing it "
                f"positionally {fails}{_unrecorded(param, kind)}"
            )
        elif kind == "positional_only" and was != "positional_only":
            problems.append(
                f"parameter {name!r} became positional-only: old messages passing it by "
                f"keyword do not fit, and {_NOT_RUN}{_unrecorded(param, kind, kind)}"
            )
    return problems


def _removed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    new_names = {p["name"] for p in after["params"]}
    problems = []
    for param in before["params"]:
        if param["name"] in new_names:
            continue
        said = _lost(param, bool(after.get("var_args")), bool(after.get("var_kwargs")))
        if said:
            problems.append(f"parameter {param['name']!r} removed: old messages passing it {said}")
    if before.get("var_args") and not after.get("var_args"):
        problems.append(
            f"*args removed: old messages passing extra positional arguments {_NOT_RUN}"
        )
    if before.get("var_kwargs") and not after.get("var_kwargs"):
        problems.append(
            "**kwargs removed: old messages passing other keyword arguments lose "
            "them (dropped with a warning)"
        )
    return problems


def _lost(param: dict[str, Any], var_args: bool, var_kwargs: bool) -> str:
    """What becomes of a removed parameter's value in old messages; "" when nothing does
    (``**kwargs`` takes it by keyword, ``*args`` by position)."""
    by_keyword = "" if var_kwargs else "by keyword lose it (dropped with a warning)"
    if param.get("kind") == "keyword_only":
        return by_keyword
    if var_args:
        return f"{by_keyword}; positionally it lands in *args" if by_keyword else ""
    by_position = f"positionally do not fit, and {_NOT_RUN}"
    return f"{by_keyword}; {by_position}" if by_keyword else by_position
