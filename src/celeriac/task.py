"""Task: a registered function with its options, and the ways to send it.

``Task[P, R]`` is generic over the function's parameters, so ``add.delay("x")`` for
``def add(x: int, y: int)`` is a type error, and ``add.delay(1, 2)`` is an
``AsyncResult[int]``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from celeriac.errors import Retry
from celeriac.message import Message, new_task_id

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.canvas import Group, Signature
    from celeriac.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")

#: Pass as a time limit or expiry to opt a task out of it explicitly (``celeriac check``
#: lists such tasks). Anything left unset takes the app's default instead.
UNBOUNDED = math.inf


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's options; None means "the app's default"."""

    queue: str | None = None
    priority: int | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None
    expires: float | None = None
    max_deliveries: int | None = None
    ignore_result: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # options that middleware declared


@dataclass(slots=True)
class Request:
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
    headers: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    message: Message | None = None


_current: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "celeriac_request", default=None
)


def _absolute(when: float | dt.datetime | dt.timedelta | None, now: float) -> float | None:
    if when is None:
        return None
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError(f"naive datetime {when!r}: give it a timezone")
        return when.timestamp()
    if isinstance(when, dt.timedelta):
        return now + when.total_seconds()
    return now + float(when)


def _to_ms(when: float | None, *, up: bool = False) -> float | None:
    """A time to whole milliseconds (rounded, or up for a due time, never early): its JSON
    is 14 characters instead of 18, in every queued message."""
    if when is None:
        return None
    return math.ceil(when * 1000) / 1000 if up else _nearest_ms(when)


def _nearest_ms(when: float) -> float:
    """``round(when, 3)`` for a Unix time, in a quarter of its time (paid per message): the
    nearest double to k / 1000 prints with at most three decimals."""
    return int(when * 1000 + 0.5) / 1000


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
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, as a plain call."""
        result: R = self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)
        return result

    @property
    def request(self) -> Request:
        """The invocation being run (inside a task only)."""
        request = _current.get()
        if request is None:
            raise RuntimeError(f"{self.name}.request is only available while the task runs")
        return request

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; return its result handle at once."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Async face of :meth:`delay`."""
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task with options: ``countdown``, ``eta``, ``expires``, ``priority``,
        ``queue``, ``task_id``, ``headers``, ``soft_time_limit``, ``time_limit``.

        Raises:
            SerializationError: an argument cannot be encoded (names the argument).
            PayloadTooLarge: the message is over ``task_payload_max_bytes``.
        """
        message = self.message(args, kwargs, **options)
        return self.app.publish(message)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Async face of :meth:`apply_async`."""
        message = self.message(args, kwargs, **options)
        return await self.app.apublish(message)

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature with (partial) arguments: ``add.s(2)``; in a chain the previous
        result is prepended (``add.s(1) | add.s(2)``). See :mod:`celeriac.canvas`."""
        from celeriac.canvas import Signature

        return Signature(self, args, kwargs)

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

    def message(
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
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        **extra: Any,
    ) -> Message:
        """Build the message ``apply_async`` would send, without sending it."""
        if extra:
            unknown = set(extra) - self.app.middleware.known_options()
            if unknown:
                raise TypeError(
                    f"{self.name}.apply_async() got unknown option(s) {', '.join(sorted(unknown))}"
                )
        conf, opts = self.app.conf, self.options
        now = time.time()
        # The common case (no countdown, eta or expires given; the task's or the app's
        # expiry in seconds) without a call per field: this runs once per message sent.
        if countdown is not None:
            due = _absolute(countdown, now)
        elif eta is None:
            due = None
        else:
            due = eta if isinstance(eta, float | int) else _absolute(eta, 0.0)
        ttl = expires
        if ttl is None:
            ttl = opts.expires if opts.expires is not None else conf.task_expires
        if ttl == UNBOUNDED:
            expires_at = None
        elif ttl.__class__ is float or ttl.__class__ is int:
            expires_at = _nearest_ms((due or now) + ttl)
        else:
            expires_at = _to_ms(_absolute(ttl, due or now))
        level = priority
        if level is None:
            level = opts.priority if opts.priority is not None else conf.task_default_priority
        if not 0 <= level <= 9:
            raise ValueError(f"priority {level} for task {self.name} is outside 0..9")
        parent = _current.get()
        return Message(
            id=task_id or new_task_id(),
            task=self.name,
            args=list(args),
            kwargs=kwargs or {},
            queue=queue or opts.queue or conf.task_default_queue,
            priority=level,
            eta=_to_ms(due, up=True),
            expires=expires_at,
            soft_limit=soft_time_limit,
            hard_limit=time_limit,
            root_id=(parent.root_id or parent.id) if parent else None,
            parent_id=parent.id if parent else None,
            headers=headers or {},
            options=extra,
            sent_at=_nearest_ms(now),
        )

    def retry(self, exc: BaseException | None = None, countdown: float | None = None) -> Retry:
        """Return a :class:`Retry` to raise: ``raise self.retry(exc=e, countdown=5)``."""
        return Retry(delay=countdown, exc=exc)

    def update_state(self, state: str = "PROGRESS", meta: dict[str, Any] | None = None) -> None:
        """Store a custom state and progress data, visible in ``AsyncResult.info``."""
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


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def task_name_for(fn: Callable[..., Any]) -> str:
    """The default task name: ``module.qualname``; a script run as __main__ uses its file."""
    import sys
    from pathlib import Path

    module = fn.__module__
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        module = Path(main_file).stem if main_file else "__main__"
    return f"{module}.{fn.__qualname__}"
