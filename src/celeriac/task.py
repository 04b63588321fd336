"""Task: a registered function with its options, and the ways to send it.

``Task[P, R]`` is generic over the function's parameters, so ``add.delay("x")`` for
``def add(x: int, y: int)`` is a type error, and ``add.delay(1, 2)`` is an
``AsyncResult[int]``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from celeriac.errors import Retry
from celeriac.message import LATEST_TIME, Message, new_task_id

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.arguments import Conversions
    from celeriac.canvas import Group, Signature
    from celeriac.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")

#: Pass as a time limit or expiry to opt a task out of it explicitly (``celeriac check``
#: lists such tasks). Anything left unset takes the app's default instead.
UNBOUNDED = math.inf

#: How a message carries a per-call time limit of UNBOUNDED: 100 years, longer than any
#: task runs. JSON has no infinity (it wrote null, "the task's own limit", so the opt-out
#: was lost), and every worker, older ones too, arms this as a plain timer: it is within
#: ``signal.setitimer``'s and ``threading.TIMEOUT_MAX``'s range.
NO_LIMIT_SECONDS = 3_153_600_000.0

#: Options given in seconds: over 0, UNBOUNDED to opt out, or a timedelta.
DURATIONS = frozenset({"soft_time_limit", "time_limit", "expires"})


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


def _absolute(
    when: float | dt.datetime | dt.timedelta, now: float, option: str, task: str
) -> float:
    """``when`` as a Unix time: an aware datetime as it is, seconds or a timedelta after
    ``now``. Anything else fails here, naming the task and the option: a value that slipped
    through would stop the send with a bare ``ValueError`` (NaN, a typo'd string), or put a
    due time in the message that no worker can read.

    Example:
        >>> _absolute(dt.timedelta(seconds=5), 100.0, "countdown", "shop.add")
        105.0
        >>> _absolute(float("nan"), 100.0, "countdown", "shop.add")
        Traceback (most recent call last):
        ValueError: task shop.add: countdown=nan is not a finite number of seconds
        >>> _absolute(1e300, 100.0, "countdown", "shop.add")
        Traceback (most recent call last):
        ValueError: task shop.add: countdown=1e+300 puts its start after the year 9999; ...
    """
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError(
                f"task {task}: {option}={when!r} has no timezone (celeriac cannot tell "
                "which zone it is in): use datetime.now(timezone.utc) or .astimezone()"
            )
        return when.timestamp()
    seconds = when.total_seconds() if isinstance(when, dt.timedelta) else when
    if seconds.__class__ is not float and (seconds.__class__ is bool or not _is_real(seconds)):
        kinds = (
            "an aware datetime or a Unix time"
            if option == "eta"
            else "seconds (a number), a timedelta or an aware datetime"
        )
        raise TypeError(
            f"task {task}: {option} must be {kinds}, got {type(when).__name__} {when!r}"
        )
    at = now + float(seconds)
    if not math.isfinite(at):
        raise ValueError(f"task {task}: {option}={when!r} is not a finite number of seconds")
    if at > LATEST_TIME and option != "expires":  # an expiry that far ahead means never
        # The broker would hold it delayed for ever, and a worker dead-letters such an eta.
        raise ValueError(
            f"task {task}: {option}={when!r} puts its start after the year 9999; pass "
            "a Unix time in seconds, or a timedelta"
        )
    return at


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def option_problem(option: str, value: Any) -> str:
    """What ``value`` of a core task option should be instead; empty when it is fine.
    The one check of these options, for ``@app.task`` and for ``apply_async``.

    Example:
        >>> option_problem("priority", 12)
        'a whole number from 0 to 9 (9 runs first)'
        >>> option_problem("time_limit", dt.timedelta(minutes=1))
        ''
    """
    whole = isinstance(value, int) and not isinstance(value, bool)
    if option == "queue" and not (isinstance(value, str) and value):
        return "a queue name (a non-empty str)"
    if option == "priority" and not (whole and 0 <= value <= 9):
        return "a whole number from 0 to 9 (9 runs first)"
    if option == "max_deliveries" and not (whole and value >= 1):
        return "a whole number of at least 1"
    if option == "ignore_result" and not isinstance(value, bool):
        return "True or False"
    if option in DURATIONS:
        seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
        if not (_is_real(seconds) and seconds > 0):  # NaN is never > 0
            return "a number of seconds over 0 or a timedelta (UNBOUNDED: no limit)"
    return ""


def _check_options(
    task: str,
    *,
    task_id: object,
    queue: object,
    headers: object,
    soft_time_limit: object,
    time_limit: object,
) -> None:
    """Refuse per-call options of a type the message cannot carry. The encoder writes any
    type, but every worker reads the message against its schema: a ``task_id=42`` or a
    ``queue=5`` would be sent, then dead-lettered as malformed, and the task never run.

    Example:
        >>> _check_options(
        ...     "shop.add", task_id=42, queue="q", headers={}, soft_time_limit=None, time_limit=5
        ... )
        Traceback (most recent call last):
        TypeError: task shop.add: task_id must be a str, got int 42; pass task_id=str(42)
    """
    for option, value in (("task_id", task_id), ("queue", queue)):
        if value and not isinstance(value, str):
            raise TypeError(
                f"task {task}: {option} must be a str, got {type(value).__name__} {value!r}; "
                f"pass {option}=str({value!r})"
            )
    if headers and not isinstance(headers, dict):
        raise TypeError(f"task {task}: headers must be a dict, got {type(headers).__name__}")
    for option, limit in (("soft_time_limit", soft_time_limit), ("time_limit", time_limit)):
        problem = "" if limit is None else option_problem(option, limit)
        if problem:
            raise ValueError(f"task {task}: {option} must be {problem}, got {limit!r}")


def _wire_limit(limit: float | dt.timedelta | None) -> float | None:
    """A per-call time limit as the message carries it: seconds, UNBOUNDED as
    :data:`NO_LIMIT_SECONDS` (JSON would carry it as null: the task's own limit).

    Example:
        >>> _wire_limit(dt.timedelta(minutes=2)), _wire_limit(UNBOUNDED), _wire_limit(None)
        (120.0, 3153600000.0, None)
    """
    if limit is None:
        return None
    seconds = float(limit.total_seconds() if isinstance(limit, dt.timedelta) else limit)
    return NO_LIMIT_SECONDS if seconds == UNBOUNDED else seconds


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
        self._arguments: Arguments | None = None  # made at the first send
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
            TypeError: the arguments do not fit the task function's signature, or a value
                could not be read back as its parameter's annotated type (a str that is no
                datetime, for a ``datetime``; a str for ``bytes``). Nothing is sent: the
                call would fail in the worker.
            SerializationError: an argument cannot be encoded (names the argument).
            PayloadTooLarge: the message is over ``task_payload_max_bytes``.
        """
        self.check_arguments(args, kwargs)
        conversions = self.conversions
        if conversions is not None:  # only a task with a bytes, datetime, ... parameter
            conversions.check(self.name, args, kwargs)
        message = self.message(args, kwargs, **options)
        return self.app.publish(message)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Async face of :meth:`apply_async`."""
        self.check_arguments(args, kwargs)
        conversions = self.conversions
        if conversions is not None:  # only a task with a bytes, datetime, ... parameter
            conversions.check(self.name, args, kwargs)
        message = self.message(args, kwargs, **options)
        return await self.app.apublish(message)

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
        if task_id or queue or headers or soft_time_limit is not None or time_limit is not None:
            _check_options(
                self.name,
                task_id=task_id,
                queue=queue,
                headers=headers,
                soft_time_limit=soft_time_limit,
                time_limit=time_limit,
            )
            soft_limit, hard_limit = _wire_limit(soft_time_limit), _wire_limit(time_limit)
        # The common case (no countdown, eta or expires given; the task's or the app's
        # expiry in seconds) without a call per field: this runs once per message sent.
        if countdown is not None:
            due = _absolute(countdown, now, "countdown", self.name)
        elif eta is None:
            due = None
        elif isinstance(eta, dt.timedelta):  # would read as seconds after 1970: runs at once
            raise TypeError(
                f"task {self.name}: eta is a point in time (an aware datetime or a Unix "
                f"time), got timedelta {eta!r}; for a delay pass countdown={eta!r}"
            )
        else:
            due = _absolute(eta, 0.0, "eta", self.name)
        if expires is None:  # the task's or the app's, both checked when they were set
            ttl = opts.expires if opts.expires is not None else conf.task_expires
            expires_at = None if ttl == UNBOUNDED else _nearest_ms((due or now) + ttl)
        elif expires == UNBOUNDED:
            expires_at = None
        else:
            expires_at = _to_ms(_absolute(expires, due or now, "expires", self.name))
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
            eta=_to_ms(due, up=True),
            expires=expires_at,
            soft_limit=soft_limit,
            hard_limit=hard_limit,
            root_id=(parent.root_id or parent.id) if parent else None,
            parent_id=parent.id if parent else None,
            headers=headers or {},
            options=extra,
            sent_at=_nearest_ms(now),
        )

    def _check_call_options(self, extra: dict[str, Any]) -> None:
        """Refuse, before anything is sent, a middleware option this call cannot give: one
        no middleware declared, one only ``@app.task`` takes, or a value its middleware
        could not apply (it failed in the worker, for this message)."""
        stack = self.app.middleware
        unknown = set(extra) - stack.known_options()
        if unknown:
            raise TypeError(
                f"{self.name}.apply_async() got unknown option(s) {', '.join(sorted(unknown))}"
            )
        only = sorted(stack.task_only_options() & extra.keys())
        if only:
            # Said here: the encoder's "an argument is not JSON-serializable" misled.
            raise TypeError(
                f"task {self.name}: {', '.join(only)} can only be set on @app.task(...), not "
                "per call: its value (a class or a function) cannot travel in a message. "
                "Set it where the task is defined, or define a second task with it"
            )
        stack.check_options(self.app, self.name, extra)

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
        if self.signature is None:
            return
        given = len(args)
        if not kwargs:
            if self.fewest <= given <= self.most:
                return
        elif self.simple and given <= self.most and self._fits(given, kwargs):
            return
        try:
            self.signature.bind(*args, **(kwargs or {}))
        except TypeError as exc:
            raise TypeError(
                f"cannot send task {task}: {exc}; the function is {self.text}"
            ) from None

    def _fits(self, given: int, kwargs: dict[str, Any]) -> bool:
        keywords, index = self.keywords, self.index
        for name in kwargs:
            if keywords is not None and name not in keywords:
                return False
            if index.get(name, given) < given:  # given both by position and by name
                return False
        return all(at < given or name in kwargs for at, name in self.needed)


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
