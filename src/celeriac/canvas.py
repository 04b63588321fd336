"""Canvas: compose tasks into workflows — signatures, chain, group, chord, map and chunks.

Example:
    >>> from celeriac import Celeriac
    >>> from celeriac.canvas import chord
    >>> from celeriac.testing import run_queued
    >>> app = Celeriac("doc", broker="memory://")
    >>> @app.task
    ... def add(x: int, y: int) -> int:
    ...     return x + y
    >>> @app.task
    ... def total(values: list[int]) -> int:
    ...     return sum(values)
    >>> result = chord([add.s(i, i) for i in range(4)], total.s()).apply_async()
    >>> run_queued(app)
    5
    >>> result.get(timeout=1)
    12

A workflow is plain data (:meth:`Canvas.to_dict`). Sending one freezes it — every task
gets its id up front, derived from the workflow's id (:mod:`celeriac.workflow`) — and
sends its first tasks in one broker round trip, each carrying what follows it. The
:class:`~celeriac.middleware.canvas.Canvas` middleware moves the workflow on as tasks
finish; fixed ids are what make that safe to repeat (see that module).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload

from celeriac.errors import ConfigurationError
from celeriac.group_result import GroupResult
from celeriac.middleware.flow import Node
from celeriac.options import CALL_OPTIONS, check_send_options, unknown_options
from celeriac.result import AsyncResult
from celeriac.workflow import Result, normalized, send

if TYPE_CHECKING:
    from typing import Self

    from typing_extensions import TypeVar as TypeVarWithDefault

    from celeriac.app import Celeriac
    from celeriac.task import Task

R = TypeVar("R")

# For type checkers, the handle that sending a piece returns: a task's AsyncResult[R], a
# group's GroupResult, a chain's last step's, a chord's body's; so that
# chain(add.s(1, 2), add.s(3)).apply_async().get() is an int, with no cast. ``object`` means
# "not known" (a bare ``Canvas`` or ``Chain`` annotation, a list mixing tasks and groups)
# and sends as either handle, ``Result``, as before. No bound: mypy joins
# Canvas[AsyncResult[int]] and Canvas[GroupResult] to Canvas[object], which a bound would
# turn into plain object, and [add.s(1), add.map(xs)] would stop being a list of canvases.
if TYPE_CHECKING:
    ResultT_co = TypeVarWithDefault("ResultT_co", covariant=True, default=object)
else:  # typing.TypeVar takes a default only from Python 3.13; the checker's is what counts
    ResultT_co = TypeVar("ResultT_co", covariant=True)
LastT = TypeVar("LastT")  # the handle of a chain's last step


class Canvas(Generic[ResultT_co]):
    """What every workflow piece shares: options, links, ``|`` and sending.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def add(x: int, y: int) -> int:
        ...     return x + y
        >>> flow = (add.s(1, 2) | add.s(3)).set(queue="math")
        >>> flow.to_dict()["options"]
        {'queue': 'math'}
    """

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}
        self.callbacks: list[Canvas] = []
        self.errbacks: list[Canvas] = []

    @property
    def app(self) -> Celeriac | None:
        """The app this workflow is sent with (the first one its tasks know)."""
        return None

    def set(self, **options: Any) -> Self:
        """Set sending options (``queue``, ``priority``, ``countdown``, ``eta``, ``expires``,
        ``task_id``, ``headers``, time limits, and options middleware declare); returns self.

        A chain's, group's or chord's options apply to every task in it that does not set
        its own; ``countdown`` and ``eta`` only delay the tasks that start the workflow.

        Raises:
            ValueError: an option that no part of celeriac understands, or a value the send
                would refuse (an empty ``task_id`` or ``queue``, a queue name no worker
                could be given).
            TypeError: a ``task_id``, ``queue`` or ``headers`` of the wrong type.
            ConfigurationError: a value its middleware could not apply (``rate_limit="10/x"``).
        """
        app = self.app
        known = CALL_OPTIONS | (app.middleware.known_options() if app is not None else set())
        unknown = sorted(set(options) - known)
        if unknown and app is not None:
            raise ValueError(f"{unknown_options(unknown, known)}; known: {sorted(known)}")
        what = self.name if isinstance(self, Signature) else type(self).__name__.lower()
        who = f"task {what}" if isinstance(self, Signature) else what
        # Checked here, where the caller can see it: a later step is built in a worker,
        # where a value that cannot be sent stopped the workflow (and an empty task_id
        # was taken as none given, so the piece got a made-up id).
        check_send_options(
            who,
            task_id=options.get("task_id"),
            queue=options.get("queue"),
            headers=options.get("headers"),
            soft_time_limit=options.get("soft_time_limit"),
            time_limit=options.get("time_limit"),
        )
        policy = {k: v for k, v in options.items() if k not in CALL_OPTIONS}
        if policy and app is not None:
            app.middleware.check_options(app, what, policy)
        for key, value in options.items():
            self.options.update(normalized(key, value))
        return self

    def link(self, callback: Canvas) -> Self:
        """Apply ``callback`` with this piece's result when it succeeds; returns self.

        A chain's callback gets the chain's result; a group's gets the list of results.
        """
        self.callbacks.append(_callback("link", callback))
        return self

    def link_error(self, errback: Canvas) -> Self:
        """Apply ``errback`` when this piece fails; returns self.

        The errback's first argument is an error dict: the ``id`` and ``task`` that failed
        (in a chain, the step that failed), and the error's ``type`` and ``message``.
        """
        self.errbacks.append(_callback("link_error", errback))
        return self

    def __or__(self, other: Canvas[LastT]) -> Chain[LastT]:
        """``a | b``: a chain."""
        return Chain(self, other)

    def _node(self) -> Node:
        raise NotImplementedError

    def to_dict(self) -> Node:
        """This workflow as plain JSON-ready data (what travels inside messages)."""
        node = self._node()
        if self.options:
            node["options"] = dict(self.options)
        if self.callbacks:
            node["link"] = [c.to_dict() for c in self.callbacks]
        if self.errbacks:
            node["link_error"] = [e.to_dict() for e in self.errbacks]
        return node

    @overload
    def apply_async(
        self: Canvas[AsyncResult[R]],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]: ...
    @overload
    def apply_async(
        self: Canvas[GroupResult],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult: ...
    @overload
    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Result: ...
    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Result:
        """Send the workflow; return the handle on its result.

        ``args`` and ``kwargs`` are partial arguments for the tasks that start it
        (prepended / merged); ``options`` as for :meth:`set`.
        """
        return send(self._require_app(), self.to_dict(), args, kwargs, options)

    @overload
    def delay(self: Canvas[AsyncResult[R]], *args: Any, **kwargs: Any) -> AsyncResult[R]: ...
    @overload
    def delay(self: Canvas[GroupResult], *args: Any, **kwargs: Any) -> GroupResult: ...
    @overload
    def delay(self, *args: Any, **kwargs: Any) -> Result: ...
    def delay(self, *args: Any, **kwargs: Any) -> Result:
        """Send the workflow with partial arguments for its first tasks."""
        return self.apply_async(args, kwargs)

    @overload
    async def aapply_async(
        self: Canvas[AsyncResult[R]],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]: ...
    @overload
    async def aapply_async(
        self: Canvas[GroupResult],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult: ...
    @overload
    async def aapply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Result: ...
    async def aapply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Result:
        """Async face of :meth:`apply_async`, for a web handler that fans out.

        The send runs in a thread of the broker's own (a workflow's send is sync: its
        hooks and ids); called on the loop, a frozen Redis stalled every request of the
        server for its socket timeout, and ``asyncio.wait_for`` could not fire.

        Example:
            >>> import asyncio
            >>> from celeriac import Celeriac
            >>> from celeriac.canvas import group
            >>> app = Celeriac("doc", broker="memory://")
            >>> add = app.task(name="doc.add")(lambda x, y: x + y)
            >>> len(asyncio.run(group(add.s(1, 1), add.s(2, 2)).aapply_async()).results)
            2
        """
        app = self._require_app()
        return await app.broker.send_off_loop(self.apply_async, args, kwargs, **options)

    @overload
    async def adelay(self: Canvas[AsyncResult[R]], *args: Any, **kwargs: Any) -> AsyncResult[R]: ...
    @overload
    async def adelay(self: Canvas[GroupResult], *args: Any, **kwargs: Any) -> GroupResult: ...
    @overload
    async def adelay(self, *args: Any, **kwargs: Any) -> Result: ...
    async def adelay(self, *args: Any, **kwargs: Any) -> Result:
        """Async face of :meth:`delay`: ``await chain(a.s(1), b.s()).adelay()``."""
        return await self.aapply_async(args, kwargs)

    def _require_app(self) -> Celeriac:
        app = self.app
        if app is None and isinstance(self, Group) and not self.members:
            raise ValueError(
                "group() has no members, so it knows no app to send with (and there is "
                "nothing to send): skip the send when the list is empty "
                "(if ids: group(...).apply_async())"
            )
        if app is None:
            raise ConfigurationError(
                f"{self!r} knows no app: build its signatures from tasks (add.s(...)) or "
                "pass app= to signature()"
            )
        return app


class Signature(Canvas[AsyncResult[R]], Generic[R]):
    """One task with (partial) arguments and options: ``add.s(1, 2)``.

    In a chain, the previous result is prepended to the arguments unless the signature is
    immutable (``add.si(1, 2)``).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def add(x: int, y: int) -> int:
        ...     return x + y
        >>> s = add.s(2).set(countdown=10)
        >>> s(1)
        3
        >>> s.to_dict()
        {'kind': 'task', 'task': 'celeriac.canvas.add', 'args': [2], 'options': {'countdown': 10}}
    """

    def __init__(
        self,
        task: Task[Any, R] | str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        app: Celeriac | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(task, str):
            self.name, self._app = task, app
            self.task: Task[Any, R] | None = app.tasks.get(task) if app is not None else None
        else:
            self.name, self.task, self._app = task.name, task, task.app
        self.args = list(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable
        self.chunk = False  # args[0] holds argument lists: see Task.chunks
        self.set(**options)

    def __repr__(self) -> str:
        args = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}{'.si' if self.immutable else '.s'}({', '.join(args)})"

    @property
    def app(self) -> Celeriac | None:
        """The task's app."""
        return self._app

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Run the task here and now with the partial arguments completed."""
        if self.task is None:
            raise ConfigurationError(f"task {self.name} is not registered in this process")
        full = self.args if self.immutable else [*args, *self.args]
        value: R = self.task(*full, **{**self.kwargs, **kwargs})
        return value

    def clone(
        self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature[R]:
        """A copy with ``args`` prepended, ``kwargs`` merged and ``options`` set."""
        copy: Signature[R] = Signature(self.task or self.name, app=self._app)
        copy.args = [*args, *self.args]
        copy.kwargs = {**self.kwargs, **(kwargs or {})}
        copy.immutable, copy.chunk = self.immutable, self.chunk
        copy.options = dict(self.options)
        copy.callbacks, copy.errbacks = list(self.callbacks), list(self.errbacks)
        return copy.set(**options)

    def _node(self) -> Node:
        node: Node = {"kind": "task", "task": self.name}
        if self.args:
            node["args"] = list(self.args)
        if self.kwargs:
            node["kwargs"] = dict(self.kwargs)
        if self.immutable:
            node["immutable"] = True
        if self.chunk:
            node["chunk"] = True
        if self.task is not None and self.task.options.queue:
            node["route"] = self.task.options.queue  # for workers without this task's code
        return node

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[R]:
        """Send the task (and whatever is linked to it); return its result handle."""
        result = send(self._require_app(), self.to_dict(), args, kwargs, options)
        assert isinstance(result, AsyncResult)
        return result

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Send with partial arguments: ``add.s(2).delay(1)`` runs ``add(1, 2)``."""
        return self.apply_async(args, kwargs)


class Chain(Canvas[ResultT_co]):
    """Steps run one after another, each result the first argument of the next step.

    ``chain(a, b, c)`` is ``a | b | c``. A failed step stops the chain: the steps after it
    do not run and end FAILURE with its error, and the chain's errbacks run once.

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.testing import run_queued
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def add(x: int, y: int) -> int:
        ...     return x + y
        >>> r = chain(add.s(1, 2), add.s(10), add.s(100)).apply_async()
        >>> run_queued(app)
        3
        >>> r.get(timeout=1)
        113
    """

    # A chain's handle is its last step's: *tuple[*tuple[Canvas, ...], Canvas[LastT]] reads
    # "any steps, then the last one". For steps the checker cannot count (chain(*steps),
    # chain(generator)), the join of their handles: the last one's when all are alike.
    @overload
    def __init__(
        self: Chain[LastT], *steps: *tuple[*tuple[Canvas, ...], Canvas[LastT]]
    ) -> None: ...
    @overload
    def __init__(self: Chain[LastT], *steps: Canvas[LastT] | Iterable[Canvas[LastT]]) -> None: ...
    def __init__(self, *steps: object) -> None:  # mypy accepts no narrower type here
        super().__init__()
        self.steps: list[Canvas] = []
        for step in _pieces(steps):
            if isinstance(step, Chain) and not (step.options or step.callbacks or step.errbacks):
                self.steps.extend(step.steps)  # a | b | c is one chain of three
            else:
                self.steps.append(step)
        if not self.steps:
            raise ValueError("a chain needs at least one step")

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.steps)

    def __call__(self, *args: Any, **kwargs: Any) -> ResultT_co:
        """Celery's ``chain(a, b)()``: the same as :meth:`delay` (send it, with partial
        arguments for its first step); return the last step's handle."""
        return cast(ResultT_co, self.apply_async(args, kwargs))

    @property
    def app(self) -> Celeriac | None:
        """The app of the first step that knows one."""
        return _first_app(self.steps)

    def _node(self) -> Node:
        return {"kind": "chain", "steps": [s.to_dict() for s in self.steps]}


class Group(Canvas[GroupResult]):
    """Members sent together in one broker round trip, run in parallel.

    Its result is a :class:`~celeriac.result.GroupResult`. Followed by another step (in a
    chain), the group waits for all members and passes the list of their results on,
    like a chord.

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.testing import run_queued
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def double(x: int) -> int:
        ...     return 2 * x
        >>> g = group(double.s(i) for i in range(3)).apply_async()
        >>> run_queued(app)
        3
        >>> g.get(timeout=1)
        [0, 2, 4]
    """

    def __init__(self, *members: Canvas | Iterable[Canvas]) -> None:
        super().__init__()
        self.members: list[Canvas] = list(_pieces(members))

    def __repr__(self) -> str:
        return f"group({', '.join(repr(m) for m in self.members)})"

    def __len__(self) -> int:
        return len(self.members)

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        """Celery's ``group(...)()``: the same as :meth:`delay` (send every member, with
        partial arguments for each); return their results."""
        return self.apply_async(args, kwargs)

    @property
    def app(self) -> Celeriac | None:
        """The app of the first member that knows one."""
        return _first_app(self.members)

    def _node(self) -> Node:
        return {"kind": "group", "members": [m.to_dict() for m in self.members]}

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        """Send every member in one broker round trip; return their results."""
        result = send(self._require_app(), self.to_dict(), args, kwargs, options)
        assert isinstance(result, GroupResult)
        return result

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        """Send with partial arguments for every member."""
        return self.apply_async(args, kwargs)


class Chord(Canvas[ResultT_co]):
    """A header group, then a body that gets the list of header results, in member order.

    The body runs exactly once, after every member committed, with no polling task. When a
    member fails, by default (``on_error="stop"``) the body does not run and the chord's
    result is FAILURE with a :class:`~celeriac.errors.ChordError` naming the member and
    its error; with ``on_error="continue"`` the body runs and failed members appear in its
    list as error dicts (``id``, ``task``, ``type``, ``message``).

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.testing import run_queued
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def square(x: int) -> int:
        ...     return x * x
        >>> @app.task
        ... def total(values: list[int]) -> int:
        ...     return sum(values)
        >>> r = chord((square.s(i) for i in range(4)), total.s()).apply_async()
        >>> run_queued(app)
        5
        >>> r.get(timeout=1)
        14
        >>> r = chord(square.s(i) for i in range(4))(total.s())  # Celery's spelling: sent
        >>> run_queued(app), r.get(timeout=1)
        (5, 14)
    """

    def __init__(
        self,
        header: Group | Iterable[Canvas],
        body: Canvas[ResultT_co] | None = None,
        *,
        on_error: Literal["stop", "continue"] = "stop",
    ) -> None:
        super().__init__()
        if on_error not in ("stop", "continue"):
            raise ValueError(f"on_error={on_error!r}: use 'stop' or 'continue'")
        self.header = header if isinstance(header, Group) else Group(header)
        self.body = body  # None: given when called, chord(header)(body), as in Celery
        self.on_error = on_error

    def __call__(self, body: Canvas[LastT], **options: Any) -> LastT:
        """Celery's ``chord(header)(body)``: send this header with ``body``; return the
        body's result handle. ``options`` as for :meth:`set`.

        Raises:
            TypeError: this chord has a body already (send it with ``apply_async()``).
        """
        if self.body is not None:
            raise TypeError(
                f"{self!r} has a body already; send it with .apply_async(), or call "
                "chord(header)(body) on a chord made without one"
            )
        whole: Chord[LastT] = Chord(self.header, body, on_error=self.on_error)
        whole.options = dict(self.options)
        whole.callbacks, whole.errbacks = list(self.callbacks), list(self.errbacks)
        return cast(LastT, whole.apply_async(**options))

    def __repr__(self) -> str:
        if self.body is None:
            return f"chord({self.header!r})"
        return f"chord({self.header!r}, {self.body!r})"

    @property
    def app(self) -> Celeriac | None:
        """The app of the first task that knows one."""
        return _first_app([*self.header.members, *([] if self.body is None else [self.body])])

    def _node(self) -> Node:
        if self.body is None:
            raise TypeError(
                f"{self!r} has no body, the task that gets the header's results: send it "
                "as chord(header)(body) or chord(header, body).apply_async()"
            )
        node: Node = {"kind": "chord", "header": self.header.to_dict(), "body": self.body.to_dict()}
        if self.on_error != "stop":
            node["on_error"] = self.on_error
        return node


# Celery's spellings: chain(a, b), group(...), chord(header, body).
chain = Chain
group = Group
chord = Chord


def signature(
    name: str,
    args: Iterable[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    app: Celeriac,
    **options: Any,
) -> Signature[Any]:
    """A signature of a task known by name only (its code may live in another service).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> signature("billing.charge", [42], app=app, queue="billing")
        billing.charge.s(42)
    """
    return Signature(name, args, kwargs, app=app, **options)


def from_dict(node: Node, app: Celeriac) -> Canvas:
    """Rebuild a workflow from :meth:`Canvas.to_dict` data (e.g. received as an argument).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> flow = signature("a", app=app) | signature("b", app=app)
        >>> from_dict(flow.to_dict(), app).to_dict() == flow.to_dict()
        True
    """
    kind = node["kind"]
    piece: Canvas
    if kind == "task":
        sig: Signature[Any] = Signature(
            node["task"], node.get("args", ()), node.get("kwargs"), app=app
        )
        sig.immutable, sig.chunk = bool(node.get("immutable")), bool(node.get("chunk"))
        piece = sig
    elif kind == "chain":
        piece = Chain(*(from_dict(s, app) for s in node["steps"]))
    elif kind == "group":
        piece = Group(from_dict(m, app) for m in node["members"])
    elif kind == "chord":
        header = from_dict(node["header"], app)
        assert isinstance(header, Group)
        piece = Chord(header, from_dict(node["body"], app), on_error=node.get("on_error", "stop"))
    else:
        raise ValueError(f"unknown canvas node kind {kind!r}")
    piece.options = dict(node.get("options", {}))
    piece.callbacks = [from_dict(n, app) for n in node.get("link", ())]
    piece.errbacks = [from_dict(n, app) for n in node.get("link_error", ())]
    return piece


def chunks(task: Task[Any, Any], items: Iterable[Iterable[Any]], size: int) -> Group:
    """A group of tasks that each run ``task`` on ``size`` argument lists of ``items``.

    Fewer, larger messages for many tiny calls. The result is a list of lists.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def add(x: int, y: int) -> int:
        ...     return x + y
        >>> len(chunks(add, [(i, i) for i in range(10)], 4))
        3
    """
    if size < 1:
        raise ValueError(f"chunk size {size} must be at least 1")
    members: list[Signature[Any]] = []
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        sig: Signature[Any] = Signature(task, [[list(args) for args in batch]])
        sig.chunk = True
        members.append(sig)
    return Group(members)


def _pieces(items: tuple[object, ...]) -> list[Canvas]:
    # group(a, b) and group([a, b]) / group(generator) both work.
    if len(items) == 1 and not isinstance(items[0], Canvas):
        items = tuple(cast("Iterable[object]", items[0]))  # if not, tuple() says so
    for item in items:
        if not isinstance(item, Canvas):
            raise TypeError(f"{item!r} is not a signature: use task.s(...) or task.si(...)")
    return [i for i in items if isinstance(i, Canvas)]


def _first_app(pieces: Iterable[Canvas]) -> Celeriac | None:
    return next((p.app for p in pieces if p.app is not None), None)


def _callback(where: str, callback: object) -> Canvas:
    """``callback`` if it is a signature (or any workflow): anything else was taken, then
    failed at send with "'str' object has no attribute 'to_dict'"."""
    if not isinstance(callback, Canvas):
        raise TypeError(
            f"{where}() takes a signature, such as task.s(...), got {callback!r} "
            f"({type(callback).__name__})"
        )
    return callback
