"""Sending a workflow: freeze it (an id for every task, options pushed down), save its
group, and send its first tasks in one broker round trip.

Ids are derived from the workflow's id: a chain's steps ``<id>:s0``, ``<id>:s1``…, its
last step ``<id>``; a group's members ``<id>:0``, ``<id>:1``…; a chord's header ``<id>:h``
and body ``<id>``; links ``<id>:l0`` and errbacks ``<id>:e0``. Fixed ids are what make
continuing a workflow safe to repeat (see :mod:`celeriac.middleware.canvas`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError, SerializationError
from celeriac.group_result import GroupResult
from celeriac.message import Message, encode_message, new_task_id
from celeriac.middleware.canvas import Canvas as CanvasMiddleware
from celeriac.middleware.flow import Flow, Node
from celeriac.options import NO_LIMIT_SECONDS, UNBOUNDED
from celeriac.result import AsyncResult, group_key

if TYPE_CHECKING:
    from celeriac.app import Celeriac

Result = AsyncResult[Any] | GroupResult
"""What sending a workflow returns: a task's handle, or a group's."""

_START_ONLY = frozenset({"countdown", "eta"})  # delay a workflow's start, not every step


def send(
    app: Celeriac,
    node: Node,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Result:
    """Freeze a workflow, save its group (for ``celeriac result ID``), send its first tasks
    in one broker round trip, and return the handle on its result.

    ``args``/``kwargs`` complete the arguments of the tasks that start it; ``options`` are
    sending options for the whole workflow.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> send(app, {"kind": "task", "task": "shop.add", "args": [1, 2]}).state
        'PENDING'
    """
    if args or kwargs:
        node = _partial(node, list(args), dict(kwargs or {}))
    check_arguments(app, node)
    if options:
        extra: dict[str, Any] = {}
        for key, value in options.items():
            extra.update(normalized(key, value))
        node = {**node, "options": {**node.get("options", {}), **extra}}
    frozen = freeze(node, new_task_id())
    result = result_of(app, frozen)
    given = _given_ids(node)
    if given:  # ids made from the workflow's are distinct and new by construction
        _check_unique_ids(frozen)
        if _waited_on(frozen):
            _check_ids_unused(app, frozen, result.id, given)
    _save_group(app, frozen, result)  # before sending: `celeriac result ID` finds it at once
    flow = Flow(app)
    flow.apply(frozen)
    if not any(isinstance(m, CanvasMiddleware) for m in app.middleware.middleware) and any(
        "canvas" in m.options for m in flow.messages
    ):
        raise ConfigurationError(
            f"app {app.name!r} has no Canvas middleware, so this workflow would stop after "
            "its first tasks: add celeriac.middleware.Canvas() to its middleware list"
        )
    flow.send()
    if app.conf.task_always_eager:
        from celeriac.worker.inline import run_eagerly

        run_eagerly(app)
    return result


def check_arguments(app: Celeriac, node: Node, given: int = 0) -> None:
    """Refuse a workflow in which a task registered here could never be called: its own
    arguments plus what it will be handed (``given`` leading values: the previous step's
    result in a chain, the list of results for a chord's body or a group's link, the error
    for an errback) do not fit its function. Tasks not registered here are not checked.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task(name="shop.pack")
        ... def pack(order: int) -> int: ...
        >>> @app.task(name="shop.ship")
        ... def ship(parcel: int, carrier: str) -> None: ...
        >>> check_arguments(app, (pack.s(7) | ship.s("dhl")).to_dict())  # the parcel, "dhl"
        >>> check_arguments(app, (pack.s(7) | ship.s(7, "dhl")).to_dict())
        Traceback (most recent call last):
        TypeError: step 2 of the chain: cannot send task shop.ship: too many positional \
arguments; the function is ship(parcel, carrier)

    Also refuses a task, registered here or not, whose own arguments JSON cannot hold.

    Raises:
        TypeError: naming the task, where it sits in the workflow, and the argument.
        SerializationError: the same, for an argument that is not JSON-serializable.
    """
    kind = node["kind"]
    if kind == "task":
        _check_json(node)
        if not node.get("chunk"):  # a chunk's task runs once per argument list inside it
            leading = [None] * (0 if node.get("immutable") else given)
            app.check_call(node["task"], [*leading, *node.get("args", ())], node.get("kwargs"))
    elif kind == "chain":
        for number, step in enumerate(node["steps"], 1):
            _within(f"step {number} of the chain", app, step, given if number == 1 else 1)
    elif kind == "group":
        for number, member in enumerate(node["members"], 1):
            _within(f"member {number} of the group", app, member, given)
    elif kind == "chord":
        _within("the chord's header", app, node["header"], given)
        _within("the chord's body", app, node["body"], 1)
    for where in ("link", "link_error"):
        for callback in node.get(where, ()):
            _within(f"a {where.replace('_', ' ')} callback", app, callback, 1)


def _within(place: str, app: Celeriac, node: Node, given: int) -> None:
    try:
        check_arguments(app, node, given)
    except TypeError as exc:
        raise TypeError(f"{place}: {exc}") from None
    except SerializationError as exc:
        raise SerializationError(f"{place}: {exc}") from exc.__cause__


def _check_json(node: Node) -> None:
    # Checked per task, where the workflow is still a tree: the first message carries the
    # rest of the workflow inside it, so encoding it named the first task and "an
    # argument" for a bad argument of a later step, a chord's body or a callback.
    args, kwargs = list(node.get("args", ())), dict(node.get("kwargs") or {})
    encode_message(Message(id="", task=node["task"], args=args, kwargs=kwargs))


def freeze(
    node: Node, base: str, inherited: dict[str, Any] | None = None, names: str | None = None
) -> Node:
    """A copy of ``node`` with an id for every task (derived from ``base``) and the
    options of each piece pushed down to the tasks in it.

    A chain's last step and a chord's body carry the id of the whole (their result is its
    result), so a chain or chord in that place names its other tasks from ``names``, a
    prefix of its own: two tasks of one workflow must never share an id, since sending an
    id twice runs it once and the workflow would wait forever for the second.

    Example:
        >>> flow = {"kind": "chain", "steps": [{"kind": "task", "task": "a"},
        ...                                     {"kind": "task", "task": "b"}]}
        >>> [s["options"]["task_id"] for s in freeze(flow, "w1")["steps"]]
        ['w1:s0', 'w1']
    """
    node = dict(node)
    own = dict(node.pop("options", {}))
    given = own.pop("task_id", None)
    ident = given or base
    names = given or names or ident  # the prefix of the ids of the tasks inside
    inherit = {**(inherited or {}), **own}
    later = {k: v for k, v in inherit.items() if k not in _START_ONLY}
    kind = node["kind"]
    if kind == "task":
        node["options"] = {**inherit, "task_id": ident}
    elif kind == "chain":
        node = _links_to(node, "steps")
        steps, last = node["steps"], len(node["steps"]) - 1
        node["steps"] = [
            freeze(s, ident, later if j else inherit, f"{names}:s{j}")
            if j == last
            else freeze(s, f"{names}:s{j}", later if j else inherit)
            for j, s in enumerate(steps)
        ]
        return node
    elif kind == "group":
        node["id"] = ident
        node["members"] = [
            freeze(m, f"{ident}:{i}", inherit) for i, m in enumerate(node["members"])
        ]
    elif kind == "chord":
        node = _links_to(node, "body")
        node["header"] = freeze(node["header"], f"{names}:h", inherit)
        node["body"] = freeze(node["body"], ident, later, f"{names}:b")
        return node
    for key, tag in (("link", "l"), ("link_error", "e")):
        if node.get(key):
            node[key] = [freeze(n, f"{ident}:{tag}{k}") for k, n in enumerate(node[key])]
    return node


def _links_to(node: Node, where: str) -> Node:
    # A chain's (chord's) result is its last step's (body's): its links belong there.
    links, errbacks = node.pop("link", []), node.pop("link_error", [])
    if not (links or errbacks):
        return node
    target = dict(node[where][-1] if where == "steps" else node[where])
    target["link"] = [*target.get("link", []), *links]
    target["link_error"] = [*target.get("link_error", []), *errbacks]
    if where == "steps":
        node["steps"] = [*node["steps"][:-1], target]
    else:
        node[where] = target
    return node


def result_of(app: Celeriac, node: Node) -> Result:
    """The handle on a frozen node's result: a task's, a chain's last step's, a group's
    members', a chord's body's.

    A chain's or chord's handle also knows the ids of its other tasks (earlier steps,
    header members), so that revoking or forgetting it reaches the whole workflow; links
    and errbacks are not part of it.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> result_of(app, {"kind": "task", "task": "a", "options": {"task_id": "t1"}})
        <AsyncResult a[t1]>
    """
    kind = node["kind"]
    if kind == "task":
        return AsyncResult(node["options"]["task_id"], app, node["task"])
    if kind == "group":
        return GroupResult(node["id"], [result_of(app, m) for m in node["members"]], app)
    if kind == "chain":
        result, before = result_of(app, node["steps"][-1]), node["steps"][:-1]
    else:
        result, before = result_of(app, node["body"]), [node["header"]]
    result._workflow = (*(i for n in before for i in task_ids(n)), *result._workflow)
    return result


def task_ids(node: Node) -> list[str]:
    """The id of every task a frozen node runs (not its links' and errbacks'), in order.

    Example:
        >>> flow = {"kind": "chain", "steps": [{"kind": "task", "task": "a"},
        ...                                     {"kind": "task", "task": "b"}]}
        >>> task_ids(freeze(flow, "w1"))
        ['w1:s0', 'w1']
    """
    return [task_id for task_id, _ in _tasks(node)]


def _tasks(node: Node) -> list[tuple[str, str]]:
    """(id, task name) of every task a frozen node runs, in order."""
    kind = node["kind"]
    if kind == "task":
        return [(node["options"]["task_id"], node["task"])]
    if kind == "chain":
        return [t for step in node["steps"] for t in _tasks(step)]
    if kind == "group":
        return [t for member in node["members"] for t in _tasks(member)]
    return [*_tasks(node["header"]), *_tasks(node["body"])]


def _check_unique_ids(frozen: Node) -> None:
    """Refuse two tasks of one workflow under one id (given with ``.set(task_id=...)``): an
    id is sent once, so the second never ran, and the workflow waited for ever for it or
    gave the first task's result for both."""
    seen: dict[str, str] = {}
    for task_id, name in _tasks(frozen):
        if task_id in seen:
            raise ValueError(
                f"task id {task_id!r} is given to two tasks of this workflow ({seen[task_id]} "
                f"and {name}): an id is sent once, so the workflow would wait for ever for "
                "the other. Give each task its own id, or leave task_id unset (each task's "
                "id is then made from the workflow's)."
            )
        seen[task_id] = name


def _given_ids(node: Node) -> list[str]:
    """The ids given to the tasks and pieces inside a workflow (not to the whole: that
    is the workflow's own id, which may be sent again)."""
    kind, inside = node["kind"], []
    if kind == "chain":
        inside = node["steps"]
    elif kind == "group":
        inside = node["members"]
    elif kind == "chord":
        inside = [node["header"], node["body"]]
    given = []
    for piece in inside:
        task_id = piece.get("options", {}).get("task_id")
        given += ([task_id] if task_id else []) + _given_ids(piece)
    return given


def _check_ids_unused(app: Celeriac, frozen: Node, saved_as: str, given: list[str]) -> None:
    """Refuse a group or chord sent for the first time whose tasks have ids given to
    tasks sent before (a chord sent again under a new id, its members under fixed ids):
    those sends are no-ops, so their results never reached this workflow, and its body
    never ran. Sent again under its own id, a workflow is left as it is (not refused)."""
    (saved,) = app.broker.kv_get([group_key(saved_as)])
    if saved is not None:
        return  # this workflow was sent before: sending it again is a no-op, as a task's
    wanted = set(given)
    ids = [task_id for task_id in task_ids(frozen) if task_id in wanted]
    own, *stored = app.broker.get_results([saved_as, *ids])
    if own is not None:
        return  # sent before, and done: its saved membership expired before its result
    used = [i for i, found in zip(ids, stored, strict=True) if found]
    if used:
        shown = ", ".join(repr(i) for i in used[:5]) + (" ..." if len(used) > 5 else "")
        raise ValueError(
            f"{len(used)} task id(s) of this workflow belong to tasks sent before, which "
            f"have a result ({shown}; see celeriac result ID): sent again they do not run, "
            "so this workflow would wait for ever for them. Give its tasks ids of their own "
            "(e.g. with the workflow's id in them), or leave task_id unset; to run the old "
            "tasks again, forget their results first (AsyncResult(id).forget())."
        )


def _waited_on(node: Node) -> bool:
    """Whether something waits for every task of a frozen workflow's last piece: a
    chord's body, a group's callbacks. A plain group waits on nothing: sent again with
    some members' ids already used (a batch overlapping the last), those sends are no-ops,
    as any send of an id."""
    node = _last_piece(node)
    return node["kind"] == "chord" or (
        node["kind"] == "group" and bool(node.get("link") or node.get("link_error"))
    )


def _last_piece(node: Node) -> Node:
    """What a workflow's handle is the result of: a chain's last step (its own last, for
    a chain), else the node itself."""
    while node["kind"] == "chain":
        node = node["steps"][-1]
    return node


def _save_group(app: Celeriac, node: Node, result: Result) -> None:
    # Groups and chords are found again by id alone (`celeriac result ID --wait`).
    node = _last_piece(node)
    if isinstance(result, GroupResult):
        result.save()
    elif node["kind"] == "chord":
        header = result_of(app, node["header"])
        assert isinstance(header, GroupResult)
        header.save(under=result.id)


def _partial(node: Node, args: list[Any], kwargs: dict[str, Any]) -> Node:
    node = dict(node)
    kind = node["kind"]
    if kind == "task":
        if not node.get("immutable"):
            node["args"] = [*args, *node.get("args", ())]
            node["kwargs"] = {**node.get("kwargs", {}), **kwargs}
    elif kind == "chain":
        node["steps"] = [_partial(node["steps"][0], args, kwargs), *node["steps"][1:]]
    elif kind == "group":
        node["members"] = [_partial(m, args, kwargs) for m in node["members"]]
    else:
        node["header"] = _partial(node["header"], args, kwargs)
    return node


def normalized(key: str, value: Any) -> dict[str, Any]:
    """A sending option as JSON data: times become Unix seconds.

    Example:
        >>> import datetime as dt
        >>> normalized("expires", dt.timedelta(minutes=5))
        {'expires': 300.0}
        >>> normalized("time_limit", UNBOUNDED)  # JSON has no infinity: 100 years
        {'time_limit': 3153600000.0}
    """
    # Signatures are JSON data: times become Unix seconds. A datetime expiry is absolute,
    # a number of seconds relative to each task's own send time.
    if key == "priority" and not (isinstance(value, int) and 0 <= value <= 9):
        # Checked here: a later step is built in a worker, where a bad value would stop
        # the workflow instead of reaching the caller.
        raise ValueError(f"priority {value!r} is outside 0..9")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{key}={value!r}: give the datetime a timezone")
        return {"expires_at" if key == "expires" else key: value.timestamp()}
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    if key in _LIMITS and seconds == UNBOUNDED:
        # A workflow is JSON, which has no infinity: null was "the task's own limit", so
        # the opt-out was lost for every step built in a worker.
        return {key: NO_LIMIT_SECONDS}
    return {key: seconds}


_LIMITS = frozenset({"soft_time_limit", "time_limit"})
