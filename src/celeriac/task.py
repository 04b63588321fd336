"""Task: a registered function with its options, and the ways to send it. What each option
may be set to, and how a message carries it: :mod:`celeriac.options`.

``Task[P, R]`` is generic over the function's parameters, so ``add.delay("x")`` for
``def add(x: int, y: int)`` is a type error, and ``add.delay(1, 2)`` is an
``AsyncResult[int]``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import math
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

import msgspec

from celeriac.celery_names import explain_celerys_names
from celeriac.errors import Retry
from celeriac.message import LATEST_TIME, Message, new_task_id
from celeriac.options import (
    CALL_OPTIONS,
    UNBOUNDED,
    TaskOptions,
    absolute_time,
    check_send_options,
    nearest_ms,
    option_problem,
    to_ms,
    unknown_options,
    warn_if_soft_limit_never_fires,
    wire_limit,
)
from celeriac.retry import DEFAULT_MAX_RETRIES
from celeriac.text import cut, seconds

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.arguments import Conversions
    from celeriac.canvas import Group, Signature
    from celeriac.result import AsyncResult
    from celeriac.routes import Routes

P = ParamSpec("P")
R = TypeVar("R")


class Request(msgspec.Struct):
    """What a running task knows about its own invocation (``self.request``)."""

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int = 0
    delivery_count: int = 1
    queue: str = "default"
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    headers: dict[str, Any] = msgspec.field(default_factory=dict)
    worker: str | None = None
    message: Message | None = None

    @property
    def is_eager(self) -> bool:
        """True when the task runs in the caller's process (``run_queued``, eager mode),
        not in a worker: Celery's ``self.request.is_eager``.

        Example:
            >>> Request("t1", "shop.add", [], {}, worker=IN_PROCESS).is_eager
            True
        """
        return self.worker == IN_PROCESS

    @property
    def hostname(self) -> str | None:
        """The host of the worker running the task (Celery's ``self.request.hostname``);
        this host's name for a task run in the caller's process, None outside a task.

        Example:
            >>> Request("t1", "shop.add", [], {}, worker="web-7:4242:0f3a9c").hostname
            'web-7'
        """
        if self.worker == IN_PROCESS:
            return socket.gethostname()
        return self.worker.partition(":")[0] if self.worker else None


#: ``Request.worker`` of a task run in the caller's process (run_queued, eager mode).
IN_PROCESS = "in-process"


_current: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "celeriac_request", default=None
)


class Task(Generic[P, R]):
    """A registered task. Create one with ``@app.task``.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def add(x: int, y: int) -> int:
        ...     return x + y
        >>> add(1, 2)
        3
        >>> add.name
        'celeriac.task.add'
    """

    def __init__(
        self,
        app: Celeriac,
        fn: Callable[..., Any],
        name: str,
        options: TaskOptions,
        bind: bool = False,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.bind = bind
        self.is_async = _is_coroutine_function(fn)
        self._arguments: Arguments | None = None  # made at the first send
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, as a plain call.

        Nothing of a worker's run happens: arguments are not checked or passed through
        the wire format (a datetime stays a datetime, where a worker may see text), no
        middleware runs (retries, expiry, limits), and a bound task has no
        ``self.request``. To test a task as a worker runs it, send it and run it with
        :func:`celeriac.testing.run_queued`.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.task(lambda x: x * 2, name="doc.twice")(21)
            42
        """
        result: R = self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)
        return result

    @property
    def request(self) -> Request:
        """The invocation being run (inside a task only)."""
        request = _current.get()
        if request is None:
            raise RuntimeError(
                f"{self.name}.request is only available while the task runs, and a plain "
                "call does not run it as a task. In a test, send it (delay()) and run it "
                "with celeriac.testing.run_queued(app) to give it a request"
            )
        return request

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; return its result handle at once.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.testing import run_queued
            >>> app = Celeriac("doc", broker="memory://")
            >>> add = app.task(name="doc.add")(lambda x, y: x + y)
            >>> r = add.delay(2, 3)  # sent; a worker (here run_queued) runs it
            >>> run_queued(app), r.get(timeout=1)
            (1, 5)
        """
        return self.apply_async(args, kwargs)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """:meth:`delay` once the running Django database transaction commits (Celery's
        name): a worker never reads rows the view has not committed yet, and a rollback
        sends nothing. At once outside a transaction. See :meth:`apply_async_on_commit`.

        Example:
            >>> charge.delay_on_commit(order.id)  # doctest: +SKIP
        """
        self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> None:
        """:meth:`apply_async` once the Django database transaction of ``using`` (the
        default database) commits. The arguments, options and size are checked now, so a
        mistake raises here, not at the commit; a broker that fails then raises from the
        commit (the rows are committed, the task is not sent). Returns nothing, as
        Celery's does: the task exists only once the transaction commits.

        Raises:
            ConfigurationError: Django is not installed.
            TypeError, SerializationError, PayloadTooLarge: as :meth:`apply_async`.

        Example:
            >>> with transaction.atomic():  # doctest: +SKIP
            ...     order = Order.objects.create(total=10)
            ...     charge.apply_async_on_commit((order.id,), priority=9)
        """
        from celeriac.integrations.django import on_commit

        if options and ("link" in options or "link_error" in options):
            on_commit(functools.partial(self._linked, args, kwargs, options), using)
            return
        self.check_arguments(args, kwargs)
        conversions = self.conversions
        if conversions is not None:
            conversions.check(self.name, args, kwargs)
        message = self.message(args, kwargs, **options)
        self.app.check_size(message)
        on_commit(functools.partial(self.app.publish, message), using)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Async face of :meth:`delay`: ``r = await add.adelay(2, 3)``.

        Example:
            >>> import asyncio
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> add = app.task(name="doc.add")(lambda x, y: x + y)
            >>> asyncio.run(add.adelay(2, 3))  # doctest: +ELLIPSIS
            <AsyncResult doc.add[...]>
        """
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task with options: ``countdown``, ``eta``, ``expires``, ``priority``,
        ``queue``, ``task_id``, ``headers``, ``soft_time_limit``, ``time_limit``.

        Raises:
            TypeError: the arguments do not fit the task function's signature, or a value
                could not be read back as its parameter's annotated type (a str that is no
                datetime, for a ``datetime``; a str for ``bytes``). Nothing is sent: the
                call would fail in the worker.
            SerializationError: an argument cannot be encoded (names the argument).
            PayloadTooLarge: the message is over ``task_payload_max_bytes``.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> add = app.task(name="doc.add")(lambda x, y: x + y)
            >>> add.apply_async((2, 3), countdown=5, priority=9, task_id="add-2-3").id
            'add-2-3'
            >>> add.apply_async((2,))
            Traceback (most recent call last):
            TypeError: cannot send task doc.add: missing a required argument: 'y'; the \
function is <lambda>(x, y)

        ``link`` and ``link_error`` (a signature or a list of them), as in Celery, send it
        as ``add.s(*args).link(...)`` would: see :meth:`celeriac.canvas.Canvas.link`.
        ``args=None`` is no arguments, as in Celery.
        """
        args, kwargs = call_arguments(self.name, args, kwargs)
        if options and ("link" in options or "link_error" in options):
            return self._linked(args, kwargs, options)
        self.check_arguments(args, kwargs)
        conversions = self.conversions
        if conversions is not None:  # only a task with a bytes, datetime, ... parameter
            conversions.check(self.name, args, kwargs)
        message = self.message(args, kwargs, **options)
        return self.app.publish(message)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Async face of :meth:`apply_async`."""
        args, kwargs = call_arguments(self.name, args, kwargs)
        if options and ("link" in options or "link_error" in options):
            # A workflow is sent by the sync face only: in the broker's own threads, as
            # apublish sends what would block the event loop.
            return await self.app.broker.send_off_loop(self._linked, args, kwargs, options)
        self.check_arguments(args, kwargs)
        conversions = self.conversions
        if conversions is not None:  # only a task with a bytes, datetime, ... parameter
            conversions.check(self.name, args, kwargs)
        message = self.message(args, kwargs, **options)
        return await self.app.apublish(message)

    def _linked(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> AsyncResult[R]:
        """``apply_async(..., link=..., link_error=...)``: sent as a signature with them."""
        from celeriac.canvas import Canvas, Signature

        signature: Signature[R] = Signature(self, tuple(args), dict(kwargs or {}))
        for option, attach in (("link", signature.link), ("link_error", signature.link_error)):
            given = options.pop(option, None)
            for piece in given if isinstance(given, list | tuple) else [given]:
                if piece is None:
                    continue
                if not isinstance(piece, Canvas):
                    raise TypeError(
                        f"task {self.name}: {option} must be a signature (task.s(...)) or a "
                        f"list of them, got {type(piece).__name__} {cut(repr(piece), 80)}"
                    )
                attach(piece)
        return signature.apply_async(**options)

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any] | None) -> None:
        """Raise TypeError when the function could not be called with these arguments.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task(name="shop.add")
            ... def add(x: int, y: int) -> int:
            ...     return x + y
            >>> add.check_arguments((1,), {})
            Traceback (most recent call last):
            TypeError: cannot send task shop.add: missing a required argument: 'y'; the \
function is add(x, y)
        """
        self.arguments.check(self.name, args, kwargs)

    @property
    def arguments(self) -> Arguments:
        """The function's signature, read once: checked at send, and used by the worker
        to drop keyword arguments this version does not take."""
        if self._arguments is None:
            self._arguments = Arguments(self.fn, self.bind)
        return self._arguments

    @property
    def ignores_result(self) -> bool:
        """Whether a success stores no value: the task's ``ignore_result``, else the app's
        ``task_ignore_result`` (read at each call: the app's setting may change).

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.task(ignore_result=True)(lambda: None).ignores_result
            True
        """
        ignore = self.options.ignore_result
        return bool(self.app.conf.task_ignore_result if ignore is None else ignore)

    @functools.cached_property
    def conversions(self) -> Conversions | None:
        """How arguments that JSON carried as other types (bytes as base64 text, a datetime
        as ISO text, a tuple as a list) are turned back into the parameters' annotated
        types; None when no parameter needs it. Worked out once, at the first send or run
        (annotations may name classes defined after the task); then a plain attribute,
        read by the worker for every task. See :mod:`celeriac.arguments`."""
        from celeriac.arguments import conversions_for

        return conversions_for(self.fn, self.bind)

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature with (partial) arguments: ``add.s(2)``; in a chain the previous
        result is prepended (``add.s(1) | add.s(2)``). See :mod:`celeriac.canvas`."""
        from celeriac.canvas import Signature

        return Signature(self, args, kwargs)

    def signature(
        self,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        **more_options: Any,
    ) -> Signature[R]:
        """Celery's long form of :meth:`s`: the arguments as a tuple and a dict, the send
        options beside them, checked as :meth:`~celeriac.canvas.Canvas.set` checks them.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> add = app.task(name="doc.add")(lambda x, y: x + y)
            >>> sig = add.signature((2,), {"y": 3}, countdown=10)  # add.s(2, y=3).set(...)
            >>> sig, sig.options
            (doc.add.s(2, y=3), {'countdown': 10})
        """
        from celeriac.canvas import Signature

        made: Signature[R] = Signature(self, tuple(args), dict(kwargs or {}), immutable=immutable)
        given = {**(options or {}), **more_options}
        return made.set(**given) if given else made

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: in a chain it ignores the previous result."""
        from celeriac.canvas import Signature

        return Signature(self, args, kwargs, immutable=True)

    def map(self, items: Iterable[Any]) -> Group:
        """A group calling this task once per item: ``double.map([1, 2, 3])``."""
        from celeriac.canvas import Group

        return Group([self.s(item) for item in items])

    def starmap(self, items: Iterable[Iterable[Any]]) -> Group:
        """A group calling this task once per argument list: ``add.starmap([(1, 2)])``."""
        from celeriac.canvas import Group

        return Group([self.s(*args) for args in items])

    def chunks(self, items: Iterable[Iterable[Any]], n: int) -> Group:
        """A group of tasks each calling this one on ``n`` argument lists, in one message."""
        from celeriac.canvas import chunks

        return chunks(self, items, n)

    def message(  # noqa: PLR0912 - one function: a call per field costs every send
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: float | dt.datetime | None = None,
        expires: float | dt.datetime | dt.timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        headers: dict[str, Any] | None = None,
        soft_time_limit: float | dt.timedelta | None = None,
        time_limit: float | dt.timedelta | None = None,
        **extra: Any,
    ) -> Message:
        """Build the message ``apply_async`` would send, without sending it."""
        if extra:
            self._check_call_options(extra)
        conf, opts = self.app.conf, self.options
        now = time.time()
        soft_limit = hard_limit = None
        if (
            task_id is not None
            or queue is not None
            or headers
            or soft_time_limit is not None
            or time_limit is not None
        ):
            check_send_options(
                f"task {self.name}",
                task_id=task_id,
                queue=queue,
                headers=headers,
                soft_time_limit=soft_time_limit,
                time_limit=time_limit,
            )
            soft_limit, hard_limit = wire_limit(soft_time_limit), wire_limit(time_limit)
            if soft_limit is not None or hard_limit is not None:
                own_soft = opts.soft_time_limit
                own_hard = opts.time_limit
                warn_if_soft_limit_never_fires(
                    self.name,
                    soft_limit
                    if soft_limit is not None
                    else (conf.task_soft_time_limit if own_soft is None else own_soft),
                    hard_limit
                    if hard_limit is not None
                    else (conf.task_time_limit if own_hard is None else own_hard),
                    soft_limit is not None,
                    hard_limit is not None,
                )
        # The common case (no countdown, eta or expires given; the task's or the app's
        # expiry in seconds) without a call per field: this runs once per message sent.
        if countdown is not None:
            due = absolute_time(countdown, now, "countdown", self.name)
        elif eta is None:
            due = None
        elif isinstance(eta, dt.timedelta):  # would read as seconds after 1970: runs at once
            raise TypeError(
                f"task {self.name}: eta is a point in time (an aware datetime or a Unix "
                f"time), got timedelta {eta!r}; for a delay pass countdown={eta!r}"
            )
        else:
            due = absolute_time(eta, 0.0, "eta", self.name)
        # countdown=0, or an eta already passed: due now. Sent with its eta (rounded up to
        # the next ms), it went to the delayed set, where an idle Redis promotes it at its
        # next tick: up to ~100 ms late.
        due = due if due is not None and due > now else None
        if expires is None:  # the task's or the app's, both checked when they were set
            ttl = opts.expires if opts.expires is not None else conf.task_expires
            # Beyond the year 9999 (UNBOUNDED, or 1e306 whose milliseconds overflowed the
            # send) is no expiry at all.
            expires_at = None if ttl >= LATEST_TIME else nearest_ms((due or now) + ttl)
        elif expires == UNBOUNDED:
            expires_at = None
        else:
            expires_at = to_ms(_expiry_given(expires, now, due, self.name))
        if conf.routing is not None:  # what the call and the task leave open: task_routes
            queue, priority = self._routed(
                conf.routing, queue, priority, args=args, kwargs=kwargs, extra=extra
            )
        level = priority
        if level is None:
            level = opts.priority if opts.priority is not None else conf.task_default_priority
        if (
            level.__class__ is not int and (level.__class__ is bool or not isinstance(level, int))
        ) or (not 0 <= level <= 9):
            # A float, bool or string would be sent, then refused by every worker as a
            # malformed message and dead-lettered: the task would never run.
            problem = option_problem("priority", level)
            raise ValueError(f"task {self.name}: priority must be {problem}, got {level!r}")
        parent = _current.get()
        return Message(
            id=task_id or new_task_id(),
            task=self.name,
            args=list(args),
            kwargs=kwargs or {},
            queue=queue or opts.queue or conf.task_default_queue,
            priority=level,
            eta=to_ms(due, up=True),
            expires=expires_at,
            soft_limit=soft_limit,
            hard_limit=hard_limit,
            root_id=(parent.root_id or parent.id) if parent else None,
            parent_id=parent.id if parent else None,
            headers=headers or {},
            options=extra,
            sent_at=nearest_ms(now),
        )

    def _routed(
        self,
        routing: Routes,
        queue: str | None,
        priority: int | None,
        *,
        args: Any,
        kwargs: dict[str, Any] | None,
        extra: dict[str, Any],
    ) -> tuple[str | None, int | None]:
        """The queue and priority of one send as the call, else the task, else
        ``routing`` (task_routes) give them (None: the app's default)."""
        opts = self.options
        queue = queue or opts.queue
        if priority is None:
            priority = opts.priority
        if queue is None or priority is None:
            routed = routing.lookup(self.name, args, kwargs, extra, task=self)
            if routed is not None:
                queue = queue or routed.get("queue")
                priority = routed.get("priority") if priority is None else priority
        return queue, priority

    def _check_call_options(self, extra: dict[str, Any]) -> None:
        """Refuse, before anything is sent, a middleware option this call cannot give: one
        no middleware declared, one only ``@app.task`` takes, or a value its middleware
        could not apply (it failed in the worker, for this message)."""
        stack = self.app.middleware
        unknown = set(extra) - stack.known_options()
        if unknown:
            known = CALL_OPTIONS | stack.known_options()
            raise TypeError(f"{self.name}.apply_async() got {unknown_options(unknown, known)}")
        only = sorted(stack.task_only_options() & extra.keys())
        if only:
            # Said here: the encoder's "an argument is not JSON-serializable" misled.
            raise TypeError(
                f"task {self.name}: {', '.join(only)} can only be set on @app.task(...), not "
                "per call: its value (a class or a function) cannot travel in a message. "
                "Set it where the task is defined, or define a second task with it"
            )
        stack.check_options(self.app, self.name, extra)

    @property
    def max_retries(self) -> int | None:
        """The retries this task gets (its ``max_retries`` option, else 3; None: no limit),
        as Celery's ``self.max_retries``: compare ``self.request.retries`` with it.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task(max_retries=5)
            ... def push(user_id: int) -> None: ...
            >>> push.max_retries
            5
        """
        limit: int | None = self.options.extra.get("max_retries", DEFAULT_MAX_RETRIES)
        return limit

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | dt.timedelta | None = None,
        *,
        max_retries: int | None = None,
    ) -> NoReturn:
        """Raise a :class:`Retry`: ``raise self.retry(exc=e, countdown=5)``, or as Celery
        code calls it, ``self.retry(exc=e)`` alone (returned, not raised, it was lost: the
        task went on and ended SUCCESS with what it returned after it).

        ``countdown`` is seconds or a ``timedelta``, as for ``apply_async``. ``max_retries``
        is this retry's own limit, over the task's (Celery's ``retry(max_retries=5)``):
        past it, the task fails with ``exc``.

        Raises:
            TypeError, ValueError: ``countdown`` is not seconds a retry can wait (a str,
                NaN, infinity, past the year 9999), or ``exc`` is not an exception;
                raised in the task, they fail it.
        """
        if isinstance(countdown, dt.timedelta):
            countdown = countdown.total_seconds()
        try:
            retry = Retry(delay=countdown, exc=exc, max_retries=max_retries)
        except (TypeError, ValueError) as bad:  # say which task: it is read in a worker's log
            cause = exc if isinstance(exc, BaseException) else None  # "from 'text'" raises
            raise type(bad)(f"task {self.name}: {bad}") from cause
        if exc is not None:
            raise retry from exc
        raise retry

    def update_state(self, state: str = "PROGRESS", meta: dict[str, Any] | None = None) -> None:
        """Store a custom state and progress data, visible in ``AsyncResult.info``.

        Call it from the running task (a bound one: ``self.update_state(...)``); the caller
        sees ``state`` in ``AsyncResult.state`` and ``meta`` (JSON-ready) in
        ``AsyncResult.info`` until the task finishes, when its outcome replaces them (a
        success that stores nothing, ``ignore_result``, leaves them until
        ``result_expires``). One broker write per call: report per step of work, not per row.
        See examples/advanced/progress.py.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.testing import run_queued
            >>> app = Celeriac("doc", broker="memory://")
            >>> seen = []
            >>> @app.bound_task()
            ... def resize(self: Task[..., None], image_id: int) -> None:
            ...     self.update_state("RESIZING", {"image": image_id})
            ...     mine = self.app.AsyncResult(self.request.id)  # as a caller sees it
            ...     seen.append((mine.state, mine.info))
            >>> r = resize.delay(7)
            >>> run_queued(app)
            1
            >>> seen
            [('RESIZING', {'image': 7})]
        """
        from celeriac.message import ResultRecord, encode_result

        request = self.request
        record = ResultRecord(
            state=state,
            task=self.name,
            meta=meta or {},
            retries=request.retries,
            worker=request.worker,
        )
        conf = self.app.conf
        self.app.broker.store_result(request.id, encode_result(record), conf.result_expires)

    def progress(self, done: int, total: int) -> None:
        """Report progress: ``self.progress(3, 10)`` stores meta ``{"done": 3, "total": 10}``."""
        self.update_state("PROGRESS", {"done": done, "total": total})

    # Last in the class: above it, "AsyncResult" in an annotation would name this method.
    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        """This task's result handle from an id alone (Celery's ``add.AsyncResult(id)``),
        typed as the task's own result; :meth:`Celeriac.AsyncResult` for any task.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> add = app.task(name="doc.add")(lambda x, y: x + y)
            >>> add.AsyncResult("a1b2")
            <AsyncResult doc.add[a1b2]>
        """
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, self.app, self.name)


class Arguments:
    """A task function's signature, checked before a message is sent: a call that cannot
    work fails at the caller, not later in a worker (as a plain call would).

    This runs once per message sent, so the usual shapes are checked by counting and set
    lookups (well under a microsecond); ``inspect.Signature.bind`` (~10 us) only words the
    error and judges the unusual shape (positional-only parameters with ``**kwargs``). A
    function whose signature cannot be read (some builtins) is not checked.
    """

    __slots__ = ("fewest", "index", "keywords", "most", "needed", "signature", "simple", "text")

    def __init__(self, fn: Callable[..., Any], bound: bool) -> None:
        import inspect

        kinds = inspect.Parameter
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        params = list(signature.parameters.values()) if signature is not None else []
        if bound and params:  # the task itself is the first argument
            params = params[1:]
            signature = signature.replace(parameters=params) if signature else None
        bare = [p.replace(annotation=p.empty) for p in params]  # string annotations read badly
        self.text = f"{getattr(fn, '__name__', 'the function')}{inspect.Signature(bare)}"
        self.signature = signature
        positional = [
            p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        ]
        keyword_only = [p for p in params if p.kind == kinds.KEYWORD_ONLY]
        var_keyword = any(p.kind == kinds.VAR_KEYWORD for p in params)
        self.most = (
            math.inf if any(p.kind == kinds.VAR_POSITIONAL for p in params) else len(positional)
        )
        #: position of each parameter a keyword may name
        self.index = {
            p.name: i for i, p in enumerate(positional) if p.kind != kinds.POSITIONAL_ONLY
        }
        #: required parameters: (position, name); keyword-only ones at position inf
        self.needed: list[tuple[float, str]] = [
            (i, p.name) for i, p in enumerate(positional) if p.default is p.empty
        ]
        required_keywords = [p.name for p in keyword_only if p.default is p.empty]
        #: fewest positional arguments that fit; inf: a keyword is required, so never by count
        self.fewest = math.inf if required_keywords else len(self.needed)
        self.needed += [(math.inf, name) for name in required_keywords]
        #: every name a keyword may take; None: any (**kwargs, or a signature unread)
        self.keywords: frozenset[str] | None = (
            None
            if var_keyword or signature is None
            else frozenset(self.index) | {p.name for p in keyword_only}
        )
        self.simple = not (var_keyword and len(self.index) < len(positional))

    def check(self, task: str, args: Sequence[Any], kwargs: dict[str, Any] | None) -> None:
        """Raise TypeError, naming ``task`` and the signature, if the call cannot work."""
        problem = self.problem(args, kwargs)
        if problem is not None:
            raise TypeError(f"cannot send task {task}: {problem}")

    def problem(self, args: Sequence[Any], kwargs: dict[str, Any] | None) -> str | None:
        """Why the function cannot be called with these arguments, and its signature;
        None when it can (or its signature cannot be read).

        Example:
            >>> def ship(parcel: int, carrier: str) -> None: ...
            >>> Arguments(ship, bound=False).problem((1, "dhl", 3), {})
            'too many positional arguments; the function is ship(parcel, carrier)'
        """
        if self.signature is None:
            return None
        given = len(args)
        if not kwargs:
            if self.fewest <= given <= self.most:
                return None
        elif self.simple and given <= self.most and self._fits(given, kwargs):
            return None
        try:
            self.signature.bind(*args, **(kwargs or {}))
        except TypeError as exc:
            return f"{exc}; the function is {self.text}"
        return None

    def _fits(self, given: int, kwargs: dict[str, Any]) -> bool:
        keywords, index = self.keywords, self.index
        for name in kwargs:
            if keywords is not None and name not in keywords:
                return False
            if index.get(name, given) < given:  # given both by position and by name
                return False
        return all(at < given or name in kwargs for at, name in self.needed)


#: Iterables that are not a list of arguments: one argument each (a str, bytes), keyword
#: arguments (a dict), or in no order (a set).
_NOT_ARGUMENTS = (str, bytes, bytearray, dict, set, frozenset)


def call_arguments(
    task: str, args: Any, kwargs: Any
) -> tuple[tuple[Any, ...] | list[Any], dict[str, Any] | None]:
    """A send's ``args`` and ``kwargs`` as given, once they are a list or tuple (None: none)
    and a dict (None: none); TypeError naming the task otherwise.

    ``apply_async(None)`` crashed on ``len(None)``, ``apply_async("hello")`` sent five
    arguments, one per letter, and ``apply_async({"s": 1})`` ran the task with ``s="s"``.

    Example:
        >>> call_arguments("shop.ship", None, None)
        ((), None)
        >>> call_arguments("shop.ship", "parcel-7", None)
        Traceback (most recent call last):
        TypeError: cannot send task shop.ship: args must be a list or tuple of its \
positional arguments, got str 'parcel-7'; for one argument write args=('parcel-7',)
    """
    if args.__class__ is not tuple and args.__class__ is not list:
        if args is None:
            args = ()
        elif isinstance(args, tuple | list):
            pass
        elif isinstance(args, Iterable) and not isinstance(args, _NOT_ARGUMENTS):
            args = tuple(args)  # a range, a generator: in order, one argument each
        else:
            shown = cut(repr(args), 60)
            hint = (
                "; keyword arguments go in kwargs="
                if isinstance(args, dict)
                else f"; for one argument write args=({shown},)"
            )
            raise TypeError(
                f"cannot send task {task}: args must be a list or tuple of its positional "
                f"arguments, got {type(args).__name__} {shown}{hint}"
            )
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(
            f"cannot send task {task}: kwargs must be a dict of keyword arguments, got "
            f"{type(kwargs).__name__} {cut(repr(kwargs), 60)}"
        )
    return args, kwargs


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def task_name_for(fn: Callable[..., Any]) -> str:
    """The default task name: ``module.qualname``, as a worker that imports the module
    (``-A module``) names it.

    The module being run is ``__main__``: ``python -m pkg.jobs`` names its tasks
    ``pkg.jobs.NAME`` (``jobs.NAME`` was never run by ``-A pkg.jobs``), ``python jobs.py``
    ``jobs.NAME``. Code with no module (``python -c``, a REPL, a notebook) keeps
    ``__main__.NAME``, which no worker can import (see :func:`unimportable_note`).
    """
    import sys
    from pathlib import Path

    module = fn.__module__
    if module == "__main__":
        main = sys.modules["__main__"]
        spec_name = getattr(getattr(main, "__spec__", None), "name", None)
        main_file = getattr(main, "__file__", None)
        if spec_name:
            module = spec_name
        elif main_file:
            module = Path(main_file).stem
    return f"{module}.{fn.__qualname__}"


def unimported_note(task_name: str) -> str:
    """Why this process does not know a task whose module it could import; else "".

    A worker knows only the tasks of the modules it imported: ``-A`` imports the app's
    module and those its ``imports`` setting lists. The module is looked up without
    importing anything (only under a package this process has imported already).

    Example:
        >>> print(unimported_note("json.tool.main")[:56])
         Note: module json.tool is on this worker's path but was
        >>> unimported_note("no_such_package.tasks.add")
        ''
    """
    import importlib.util  # only for this warning

    module = task_name.rpartition(".")[0]
    if not module or module in sys.modules:
        return ""
    parent = module.rpartition(".")[0]
    if parent and parent not in sys.modules:
        return ""  # finding it would import the parent package: not from a log line
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return ""
    if not found:
        return ""
    return (
        f" Note: module {module} is on this worker's path but was never imported, so its "
        f"tasks are unknown here: list it in the app's imports setting (imports=[{module!r}])."
    )


def unimportable_note(task_name: str) -> str:
    """Why no worker runs a task defined outside any module, for a message; else "".

    Example:
        >>> unimportable_note("shop.tasks.add")
        ''
        >>> unimportable_note("__main__.add")[:60]
        ' Note: __main__.add was defined in python -c, a REPL or a no'
    """
    if not task_name.startswith("__main__."):
        return ""
    return (
        f" Note: {task_name} was defined in python -c, a REPL or a notebook (module "
        "__main__), so no worker can import it: define it in a module (tasks.py) and "
        "start the worker with -A that module (celeriac -A tasks worker)."
    )


explain_celerys_names(Task)  # app.control and the like: what to use instead


def _expiry_given(
    expires: float | dt.datetime | dt.timedelta, now: float, due: float | None, task: str
) -> float:
    """An expiry given per call as a Unix time: seconds from now, as the README and
    Celery say. Counted from the countdown, ``expires=5`` with ``countdown=3`` ran at
    +6.5 s. (The task's and the app's expiry count from the due time: a default shorter
    than a countdown would expire every delayed task unrun.) One before the task is due
    is refused: the task could never run.

    Example:
        >>> now = 1_800_000_000.0
        >>> _expiry_given(5, now, now + 3, "shop.add") - now
        5.0
        >>> _expiry_given(2, now, now + 6, "shop.add")
        Traceback (most recent call last):
        ValueError: task shop.add: expires=2 comes before the task is due (6s from now), ...
    """
    at = absolute_time(expires, now, "expires", task)
    if due is not None and at <= due:
        raise ValueError(
            f"task {task}: expires={expires!r} comes before the task is due "
            f"({seconds(due - now)} from now), so it would expire unrun; give an expiry "
            "after its countdown or eta (expires counts from now)"
        )
    return at
