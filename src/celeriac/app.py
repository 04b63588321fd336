"""Celeriac: the application — configuration, the task registry and the producer."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from celeriac import pid
from celeriac.brokers import broker_from_url, redacted
from celeriac.brokers.base import Broker
from celeriac.brokers.records import Outgoing
from celeriac.celery_names import explain_celerys_names
from celeriac.codec import Codec, codec_for
from celeriac.config import Settings, check_import_names
from celeriac.config_source import label, read_settings
from celeriac.errors import BrokerError, ConfigurationError, NotRegistered, PayloadTooLarge
from celeriac.message import Message
from celeriac.middleware import Middleware, MiddlewareStack, default_middleware
from celeriac.options import DURATIONS, TaskOptions, option_problem, unknown_options
from celeriac.result import AsyncResult
from celeriac.task import Task, call_arguments, task_name_for
from celeriac.text import cut

if TYPE_CHECKING:
    from celeriac.beat import Beat, PeriodicDecorator

log = logging.getLogger("celeriac")

P = ParamSpec("P")
R = TypeVar("R")

_CORE_OPTIONS = frozenset(
    {
        "name",
        "queue",
        "priority",
        "soft_time_limit",
        "time_limit",
        "expires",
        "max_deliveries",
        "ignore_result",
        "bind",
    }
)


#: Every app this process made, for :func:`shared_task` (weakly: a dropped app goes).
_APPS: weakref.WeakSet[Celeriac] = weakref.WeakSet()


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: turns a sync or async function into a Task."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """Whether ``b`` is ``a`` defined again: the same qualified name, in the same module or
    file (a module imported twice under two names, a notebook cell run again)."""
    if a is b:
        return True
    if getattr(a, "__qualname__", None) != getattr(b, "__qualname__", None):
        return False
    return a.__module__ == b.__module__ or _file_of(a) == _file_of(b)


def _file_of(fn: Callable[..., Any]) -> str | None:
    code = _code_of(fn)
    return code.co_filename if code is not None else None


def _code_of(fn: Callable[..., Any]) -> Any:
    """The code of ``fn``, under a decorator's wrapper: where the function is."""
    import inspect  # a name taken twice only

    with contextlib.suppress(ValueError):  # a cycle of __wrapped__
        fn = inspect.unwrap(fn)
    return getattr(fn, "__code__", None)


def _where(fn: Callable[..., Any]) -> str:
    """``fn`` for an error: its qualified name and where it is defined."""
    code = _code_of(fn)
    at = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(fn, '__qualname__', repr(fn))}{at}"


class Celeriac:
    """A celeriac application.

    Example:
        >>> app = Celeriac("shop", broker="memory://")
        >>> @app.task(queue="emails", soft_time_limit=10, time_limit=20)
        ... def send_welcome(user_id: int) -> str:
        ...     return f"sent to {user_id}"
        >>> app.conf.task_soft_time_limit = 60

    Args:
        name: the application's name (used in logs and worker ids).
        broker: a broker URL (``sqlite:///celeriac.db`` when omitted; the
            ``CELERIAC_BROKER_URL`` environment variable overrides the default).
        middleware: the middleware list; the default is expiry and results.
        **settings: any setting of :class:`celeriac.config.Settings`.
    """

    def __init__(
        self,
        name: str = "celeriac",
        broker: str | None = None,
        *,
        middleware: list[Middleware] | None = None,
        **settings: Any,
    ) -> None:
        self.name = name
        _APPS.add(self)
        self.conf = Settings.from_environment()
        if broker is not None and "CELERIAC_BROKER_URL" not in os.environ:
            self.conf.broker_url = broker
        self.conf.update(**settings)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.middleware = MiddlewareStack(
            middleware if middleware is not None else default_middleware()
        )
        #: What :meth:`autodiscover_tasks` named: (packages, a function that lists them,
        #: or None for Django's; module).
        self.discovered: list[tuple[tuple[str, ...] | Callable[[], Any] | None, str]] = []
        self._broker: Broker | None = None
        self._broker_pid = 0
        self._broker_url = ""
        self._codec: Codec | None = None
        self._codec_key: tuple[object, ...] = ()

    def __repr__(self) -> str:
        return f"<Celeriac {self.name} broker={redacted(self.conf.broker_url)}>"

    def config_from_object(self, source: object, *, namespace: str | None = None) -> None:
        """Take settings from a module, an object or a dict (Celery's name), as assignments
        to ``app.conf`` would; a ``CELERIAC_BROKER_URL`` variable still wins over the
        source's ``broker_url``, as it does over ``broker=``.

        ``source`` is a module or ``"module"`` / ``"module:attribute"`` to import, whose
        lowercase names are read, or Django's settings with ``namespace="CELERY"``
        (``CELERY_BROKER_URL`` sets ``broker_url``). See :func:`.config_source.read_settings`.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.config_from_object({"CELERY_TASK_DEFAULT_QUEUE": "shop"}, namespace="CELERY")
            >>> app.conf.task_default_queue
            'shop'

        Raises:
            ConfigurationError: names that are no setting, or values they cannot take (all
                of them, each with its name in the source), or a source that holds no
                setting at all.
        """
        where = label(source)
        refused: list[str] = []
        for name, setting, value in read_settings(source, namespace):
            if setting == "broker_url" and "CELERIAC_BROKER_URL" in os.environ:
                continue
            try:
                setattr(self.conf, setting, value)
            except ConfigurationError as exc:
                refused.append(f"{name}: {exc}")
        if len(refused) == 1:
            raise ConfigurationError(f"config_from_object({where!r}), {refused[0]}")
        if refused:  # all of them at once: fixed one by one, each run found the next
            said = f"config_from_object({where!r}): {len(refused)} names cannot be used:"
            said += "".join(f"\n  {line}" for line in refused)
            if namespace == "CELERY":
                said += (
                    "\nWhile Celery reads the CELERY_* names too (a move in progress), give "
                    "celeriac a namespace of its own: namespace='CELERIAC', CELERIAC_BROKER_URL..."
                )
            raise ConfigurationError(said)

    # -- the broker -----------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker, connected on first use and anew in each forked process."""
        if (
            self._broker is None
            or self._broker_pid != pid.current()
            or self._broker_url != self.conf.broker_url
        ):
            self._broker = broker_from_url(self.conf.broker_url)
            self._broker_pid, self._broker_url = pid.current(), self.conf.broker_url
        return self._broker

    @property
    def codec(self) -> Codec:
        """The message codec for the current serializer and signing settings."""
        conf = self.conf
        key = (conf.task_serializer, tuple(conf.accept_content), repr(conf.task_signing_key))
        if self._codec is None or self._codec_key != key:
            self._codec = codec_for(
                conf.task_serializer, conf.accept_content, conf.task_signing_key
            )
            self._codec_key = key
        return self._codec

    def use_broker(self, broker: Broker) -> None:
        """Use this broker object instead of one created from ``broker_url``.

        For several app objects in one process that must share one broker: two apps on
        ``memory://`` each make their own in-memory broker otherwise. Kept until
        ``broker_url`` changes, and in this process only (a forked child connects anew).
        See examples/advanced/signing.py.

        Example:
            >>> worker = Celeriac("doc", broker="memory://")
            >>> producer = Celeriac("doc", broker="memory://")
            >>> producer.use_broker(worker.broker)
            >>> producer.broker is worker.broker
            True
        """
        self._broker, self._broker_pid = broker, pid.current()
        self._broker_url = self.conf.broker_url

    # -- tasks ----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, **options: Any) -> TaskDecorator: ...

    def task(self, *fn: Callable[..., Any], **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=..., ...)``.

        Options: ``name``, ``queue``, ``priority``, ``soft_time_limit``, ``time_limit``,
        ``expires``, ``max_deliveries``, ``ignore_result``, ``bind`` and any option a
        middleware declares. With ``bind=True`` the function receives the task first
        (``self.request``, ``self.retry``); see :meth:`bound_task` for precise typing.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task(queue="emails", soft_time_limit=10, time_limit=20, expires=300)
            ... def send_welcome(user_id: int) -> str:
            ...     return f"welcome e-mail sent to user {user_id}"
            >>> send_welcome.name, send_welcome.options.queue
            ('celeriac.app.send_welcome', 'emails')
            >>> app.task(retries=3)(print)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            celeriac.errors.ConfigurationError: task builtins.print: unknown option(s) retries \
(did you mean 'max_retries'?). Known options: ...

        Raises:
            ConfigurationError: an option no middleware understands, or a value that its
                middleware could not apply (``rate_limit="10/x"``, a ``limit`` missing
                from the ``limits`` setting, ``max_retries=-1``...): the error names the
                task, the option, the value and what is accepted.
        """
        if fn:
            return self._register(fn[0], options)
        return lambda f: self._register(f, options)

    @overload
    def bound_task(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...
    @overload
    def bound_task(
        self, **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    def bound_task(self, *fn: Callable[..., Any], **options: Any) -> Any:
        """Like ``@app.task(bind=True)``, typed so that ``self`` is not a parameter:
        ``@app.bound_task`` or ``@app.bound_task(max_retries=3, ...)``.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.bound_task(max_retries=3)
            ... def charge(self: Task[..., str], order_id: int) -> str:
            ...     return f"order {order_id}, try {self.request.retries + 1}"
            >>> charge.bind
            True
        """
        if fn:
            return self._register(fn[0], {**options, "bind": True})
        return lambda f: self._register(f, {**options, "bind": True})

    def _register(self, fn: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
        if options.get("name") is not None and not isinstance(options["name"], str):
            raise ConfigurationError(
                f"task {fn.__qualname__}: name must be a str, got {options['name']!r}"
            )
        name = options.get("name") or task_name_for(fn)  # what every error below names
        known = _CORE_OPTIONS | self.middleware.known_options()
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"task {name}: {unknown_options(unknown, known)}. "
                f"Known options: {', '.join(sorted(known))}"
            )
        core = {k: options[k] for k in _CORE_OPTIONS - {"name", "bind"} if k in options}
        core = checked_task_options(name, core)
        extra = {k: v for k, v in options.items() if k not in _CORE_OPTIONS}
        if extra:  # here, at import time: in the worker it failed every message of the task
            self.middleware.check_options(self, name, extra)
        task: Task[Any, Any] = Task(
            self, fn, name, TaskOptions(**core, extra=extra), bind=bool(options.get("bind"))
        )
        earlier = self.tasks.get(name)
        if earlier is not None and not _same_function(earlier.fn, fn):
            # The second replaced the first in silence: `first.delay()` ran `second`, with
            # the arguments checked against `first`'s signature.
            raise ConfigurationError(
                f"task {name}: the name is taken by {_where(earlier.fn)}, and {_where(fn)} "
                "would replace it (every message of the name would run it). Give one of "
                "them another name: @app.task(name=...)"
            )
        self.tasks[name] = task
        return task

    def autodiscover_tasks(
        self,
        packages: Sequence[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Name packages whose ``tasks`` module (``related_name``) defines tasks (Celery's
        name): every command given ``-A`` imports ``<package>.tasks`` of each, after the
        app's module and its ``imports`` setting; a package without one is skipped, one
        that does not exist is an error. With no packages, Django's ``INSTALLED_APPS``
        (see :mod:`celeriac.integrations.django`). ``packages`` may be a function that
        returns them, called then (Celery's ``lambda: settings.INSTALLED_APPS``);
        ``force`` is taken for Celery code and changes nothing.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.autodiscover_tasks(["shop.orders", "shop.billing"])
            >>> app.discovered
            [(('shop.orders', 'shop.billing'), 'tasks')]

        Raises:
            ConfigurationError: a name that is no import name, or packages given as one
                string rather than a list.
        """
        if isinstance(packages, str):
            raise ConfigurationError(
                f"autodiscover_tasks({packages!r}): give a list of packages: "
                f"autodiscover_tasks([{packages!r}])"
            )
        del force  # Celery's "import now": a command given -A imports them at start anyway
        if callable(packages):
            check_import_names([related_name], "autodiscover_tasks")
            self.discovered.append((packages, related_name))
            return
        names = None if packages is None else tuple(packages)
        check_import_names([*(names or ()), related_name], "autodiscover_tasks")
        self.discovered.append((names, related_name))

    def get_task(self, name: str) -> Task[Any, Any]:
        """The registered task of this name.

        Raises:
            NotRegistered: no such task in this process.
        """
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"task {name!r} is not registered in app {self.name!r}. Registered: "
                f"{', '.join(sorted(self.tasks)) or 'none'}"
            ) from None

    # -- periodic tasks (celeriac.beat) ----------------------------------------------------

    @functools.cached_property
    def beat(self) -> Beat:
        """Periodic entries from code, ``beat_schedule`` and run time (celeriac.beat.Beat).

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.beat.add("ping", "doc.ping", every=60).schedule.describe()
            'every 1m'
        """
        from celeriac.beat import Beat

        return Beat(self)

    @overload
    def periodic(self, task: Task[P, R], /, **schedule: Any) -> Task[P, R]: ...
    @overload
    def periodic(self, /, **schedule: Any) -> PeriodicDecorator: ...

    def periodic(self, task: Task[Any, Any] | None = None, /, **schedule: Any) -> Any:
        """Run a task on a schedule: ``@app.periodic(cron=..., tz=...)`` or ``every=...``.

        On a function it registers the task and the entry; ``app.periodic(task, ...)``
        schedules an existing task. Keywords: ``cron``, ``tz``, ``every``, ``name``,
        ``args``, ``kwargs``, ``missed`` ("skip" or "run_once") and send options such as
        ``queue``. See :mod:`celeriac.beat`.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.periodic(cron="*/5 * * * *", tz="Europe/Kyiv")
            ... def refresh_rates() -> None: ...
        """
        return self.beat.periodic(task, **schedule)

    # -- producing ------------------------------------------------------------------------

    def publish(self, message: Message) -> AsyncResult[Any]:
        """Send one built message (:meth:`Task.message`); return its result handle.

        The send hooks run as for ``delay()``, but the arguments are not checked against
        the task's signature: ``delay()`` and ``apply_async()`` check, then publish.
        See examples/advanced/producing.py.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.publish(app.task_named("shop.report").message((7,))).state
            'PENDING'

        Raises:
            SerializationError: an argument cannot be encoded.
            PayloadTooLarge: the message is over ``task_payload_max_bytes``.
            ValueError: the message's ``eta`` is NaN or infinite (one built by hand).
            BrokerConnectionError: the broker cannot be reached; nothing was sent,
                unless the error's ``maybe_done`` is True (Redis got the message and did
                not answer in time): then send it again under the same id to be sure.
        """
        outgoing = self._outgoing(message)
        if outgoing is None:  # a middleware (dedupe) says an existing task stands for it
            return AsyncResult(message.id, self, message.task)
        try:
            self.broker.send([outgoing])
        except Exception as exc:
            self.middleware.send_failed(self, [message])
            _say_not_sent(exc, [message])
            raise
        if self.conf.task_always_eager:
            self._run_eagerly([message])
        return AsyncResult(message.id, self, message.task)

    async def apublish(self, message: Message) -> AsyncResult[Any]:
        """Async face of :meth:`publish`: ``await app.apublish(task.message(args))``.

        See examples/advanced/producing.py.
        """
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        if not self.conf.task_always_eager and self.middleware.send_blocks(self, message):
            # A dedupe key or debounce: the send hook calls the broker's sync face. Run
            # here it stalled the event loop, every request of an async web server, for
            # as long as a frozen Redis took to time out (socket_timeout, 30 s by
            # default). In a thread only this send waits. A cancel leaves the thread to
            # finish the send whole: the task is queued or not, its key right either way.
            # The broker's own threads, not the loop's default executor: sends waiting on
            # a frozen Redis held the app's own to_thread calls (and asyncio.run's end).
            return await self.broker.send_off_loop(self.publish, message)
        outgoing = self._outgoing(message)
        if outgoing is not None:
            try:
                await self.broker.asend([outgoing])
            except asyncio.CancelledError:
                # Cancelled mid-send (asyncio.wait_for, a TaskGroup, a client that went
                # away): the message may or may not be queued, as after an error with
                # maybe_done, and the caller gets no handle to wait on. Left in place, a
                # dedupe key named a task that was never queued: every later send with the
                # key got its handle and ran nothing for dedupe_ttl (an hour by default),
                # and a debounce mark superseded the burst's earlier sends, so none ran.
                self.middleware.send_failed(self, [message])
                raise
            except Exception as exc:
                self.middleware.send_failed(self, [message])
                _say_not_sent(exc, [message])
                raise
        if self.conf.task_always_eager:  # it sent, and never ran: the test saw PENDING
            self._run_eagerly([message])
        return AsyncResult(message.id, self, message.task)

    def publish_many(self, messages: Sequence[Message]) -> list[AsyncResult[Any]]:
        """Send many built messages in one broker round trip; their handles, in order.

        A message that cannot be encoded stops the call before anything is sent. When
        the send fails, the send hooks undo what they wrote (:meth:`Middleware.send_failed`)
        and the error is raised: send the same messages again (an id already queued is
        not queued twice). A message a hook answers with an existing task (dedupe) is not
        sent; its handle is that task's.
        See examples/advanced/producing.py.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> report = app.task_named("shop.report")
            >>> [r.id for r in app.publish_many([report.message((i,), task_id=f"r{i}")
            ...                                  for i in range(3)])]
            ['r0', 'r1', 'r2']
        """
        codec = self.codec  # once, not per message
        outgoing: list[Outgoing] = []
        accepted: list[Message] = []  # passed the send hooks: undo them if nothing is sent
        try:
            for m in messages:
                out = self._outgoing(m, codec)
                if out is not None:
                    outgoing.append(out)
                    accepted.append(m)
            self.broker.send(outgoing)
        except Exception as exc:
            self.middleware.send_failed(self, accepted)
            _say_not_sent(exc, accepted)
            raise
        if self.conf.task_always_eager:  # it sent, and never ran: the test saw PENDING
            self._run_eagerly(accepted)
        return [AsyncResult(m.id, self, m.task) for m in messages]

    def _run_eagerly(self, messages: Sequence[Message]) -> None:
        from celeriac.worker.inline import run_eagerly

        if messages:
            run_eagerly(self)

    def send_many(self, messages: Sequence[Message]) -> list[AsyncResult[Any]]:
        """Send many built messages in one broker round trip (``publish_many``).

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task
            ... def ping(n: int) -> int:
            ...     return n
            >>> len(app.send_many([ping.message((i,)) for i in range(3)]))
            3
        """
        return self.publish_many(messages)

    def _outgoing(self, message: Message, codec: Codec | None = None) -> Outgoing | None:
        existing = self.middleware.before_send(self, message)
        if existing is not None:
            message.id = existing
            return None
        try:
            eta = message.eta
            if eta is not None and not math.isfinite(eta):
                # Only a message built by hand gets here (the send options refuse one), and
                # a broker turned it into an integer with a bare "cannot convert float NaN".
                raise ValueError(
                    f"task {message.task}[{message.id}]: eta={eta!r} is not a finite Unix "
                    "time, so it was not sent. Send it with apply_async(countdown=...) or "
                    "eta=..., or set message.eta to time.time() plus a number of seconds."
                )
            body = (codec or self.codec).encode(message)
            size = len(body)
            if size > self.conf.task_payload_warn_bytes:
                self._check_size(message, size)
        except Exception:
            self.middleware.send_failed(self, [message])
            raise
        return Outgoing(message.id, message.queue, body, message.priority, message.eta)

    def _check_size(self, message: Message, size: int) -> None:
        largest, advice = _largest_part(message)
        if size > self.conf.task_payload_max_bytes:
            raise PayloadTooLarge(
                f"task {message.task}: message is {size:,} bytes, over task_payload_max_bytes "
                f"({self.conf.task_payload_max_bytes:,}); its largest part is {largest}. "
                f"{advice}"
            )
        log.warning(
            "task %s[%s]: message is %s bytes (warn at %s); its largest part is %s. "
            "Big messages cost broker memory and throughput. %s",
            message.task,
            cut(message.id, 200),
            f"{size:,}",
            f"{self.conf.task_payload_warn_bytes:,}",
            largest,
            advice,
        )

    def check_size(self, message: Message) -> None:
        """Raise PayloadTooLarge when ``message`` would be refused at send for its size.

        For messages built now and sent later (a periodic entry's ticks): the send would
        refuse them each time, long after whoever defined them has gone home.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task
            ... def ping(text: str) -> str:
            ...     return text
            >>> app.check_size(ping.message(("hello",)))
            >>> app.check_size(ping.message(("x" * 300_000,)))
            Traceback (most recent call last):
              ...
            celeriac.errors.PayloadTooLarge: task ...ping: message is 300,... bytes, over ...
        """
        size = len(self.codec.encode(message))
        if size > self.conf.task_payload_max_bytes:
            self._check_size(message, size)

    def check_call(self, name: str, args: Sequence[Any], kwargs: dict[str, Any] | None) -> None:
        """Raise TypeError when task ``name``, if registered here, cannot take these
        arguments; a task known only by name is not checked (its worker's code decides).

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.check_call("elsewhere.task", (1, 2, 3), {})  # not registered: unchecked
        """
        task = self.tasks.get(name)
        if task is not None:
            task.check_arguments(args, kwargs)

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name, without importing its code. The arguments are not checked
        against a function of that name registered here (the worker's code decides).
        ``link`` and ``link_error`` attach callbacks, as for ``apply_async``; ``args`` is
        a list or tuple (None, or left out: none).

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> r = app.send_task("shop.tasks.send_welcome", args=(42,))
            >>> r.state
            'PENDING'
        """
        task = self.task_named(name)
        given, kwargs = call_arguments(name, args, kwargs)
        if options and ("link" in options or "link_error" in options):
            return task._linked(given, kwargs, options)
        return self.publish(task.message(given, kwargs, **options))

    def task_named(self, name: str) -> Task[Any, Any]:
        """The task registered under ``name``, or a stand-in that builds its messages with
        the app's defaults (the code that runs it lives in some worker, not here).

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.task_named("shop.tasks.send_welcome").message((42,)).task
            'shop.tasks.send_welcome'
        """
        return self.tasks.get(name) or Task(self, _unknown_task, name, TaskOptions())

    def replay_dead_letters(self, ids: Sequence[str] | None = None, task: str | None = None) -> int:
        """Send dead letters back to their queues as fresh sends; return how many.

        ``ids`` picks some, ``task`` those of one task name, neither picks all. Each
        message this app can read is renewed (:meth:`Codec.renewed`): its expiry moves
        with it, its retries start again and it keeps its priority, so a letter replayed
        a day later runs instead of expiring at once. Other bytes go back as they are.

        Example:
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.replay_dead_letters(task="shop.charge")  # none dead-lettered yet
            0
        """
        now = time.time()
        return self.broker.replay_dead_letters(
            ids, task, renew=lambda body: self.codec.renewed(body, now)
        )

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:  # noqa: N802 - Celery's name
        """A result handle from an id alone, e.g. in another process."""
        return AsyncResult(task_id, self)


def checked_task_options(task: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``@app.task`` options when the task is defined, converting what is meant
    (a timedelta to seconds). A wrong type would otherwise surface only in the worker: a
    ``soft_time_limit="abc"`` crashes each child that takes the task until it is
    dead-lettered, and ``ignore_result="no"`` (a truthy string) drops every result.

    Example:
        >>> import datetime as dt
        >>> checked_task_options("send_welcome", {"expires": dt.timedelta(minutes=5)})
        {'expires': 300.0}
        >>> checked_task_options("send_welcome", {"priority": 12})
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: task send_welcome: priority must be a whole \
number from 0 to 9 (9 runs first), got 12
    """
    checked = dict(options)
    for option, value in options.items():
        if value is None:
            continue  # None: the app's default
        problem = option_problem(option, value)
        if problem:
            raise ConfigurationError(
                f"task {task}: {option} must be {problem}, got {cut(repr(value), 80)}"
            )
        if option in DURATIONS:
            seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
            checked[option] = float(seconds)
    return checked


def _say_not_sent(exc: BaseException, messages: Sequence[Message]) -> None:
    """Begin a broker error's text with what was not sent. The broker's words begin with
    its own step ("could not check the server: Redis at ... did not answer"), which did not
    say that the caller's task was not sent, nor which.

    Example:
        >>> exc = BrokerError("could not send: Redis at redis://h:6379/0 did not answer")
        >>> _say_not_sent(exc, [Message(id="a1", task="shop.add")])
        >>> str(exc)
        'task shop.add[a1] was not sent: could not send: Redis at redis://h:6379/0 did not answer'
    """
    if not isinstance(exc, BrokerError) or not messages or len(exc.args) != 1:
        return
    first = messages[0]
    what = (
        f"task {first.task}[{first.id}] was"
        if len(messages) == 1
        else f"{len(messages):,} tasks ({first.task}[{first.id}], ...) were"
    )
    # The broker may have queued them all the same (no answer came): "not sent" alone
    # had callers send again under new ids, and the task ran twice.
    outcome = "perhaps not sent (it may be queued)" if exc.maybe_done else "not sent"
    exc.args = (f"{what} {outcome}: {exc.args[0]}",)


def _unknown_task(*args: Any, **kwargs: Any) -> Any:
    raise NotRegistered("this task is only known by name here; a worker runs it")


_WORKFLOW = "the workflow steps it carries"


def _largest_part(message: Message) -> tuple[str, str]:
    """The largest part of ``message`` ("positional argument 0 (300,002 bytes)"), and what
    to do about it. The id, queue name and headers count too: an over-long task id was
    reported as the message's one small argument.

    Example:
        >>> _largest_part(Message(id="i" * 500, task="t", args=[1]))
        ('the task id (502 bytes)', 'Keep the task id short: it travels in every message.')
    """
    from celeriac.message import _encoder

    encode = _encoder.encode
    sizes = [(len(encode(v)), f"positional argument {i}") for i, v in enumerate(message.args)]
    sizes += [(len(encode(v)), f"argument {k!r}") for k, v in message.kwargs.items()]
    arguments = len(sizes)
    sizes += [(len(encode(v)), f"header {k!r}") for k, v in message.headers.items()]
    sizes += [
        (len(encode(v)), _WORKFLOW if k == "canvas" else f"option {k!r}")
        for k, v in message.options.items()
    ]
    sizes += [
        (len(encode(message.id)), "the task id"),
        (len(encode(message.queue)), "the queue name"),
    ]
    index = max(range(len(sizes)), key=lambda i: sizes[i][0])
    size, label = sizes[index]
    if index < arguments:
        return f"{label} ({size:,} bytes)", "Store the data elsewhere and pass its id."
    if label == _WORKFLOW:
        # "Keep the option 'canvas' short", of a chain of 4,000 steps: an option nobody set.
        return f"{label} ({size:,} bytes)", (
            "A chain's message carries every step after it (each step's arguments "
            "included): split a long chain, run its later part from a task that sends it, "
            "or pass ids rather than data to its steps."
        )
    what = label.removeprefix("the ")
    return f"{label} ({size:,} bytes)", f"Keep the {what} short: it travels in every message."


@overload
def shared_task(fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(**options: Any) -> TaskDecorator: ...


def shared_task(*fn: Callable[..., Any], **options: Any) -> Any:
    """``@app.task`` of the one app this process has made (Celery's name): for a module
    that cannot import its app, such as a reusable Django app's ``tasks.py``. Takes the
    options ``@app.task`` takes.

    The app must exist when the module is imported (a worker's ``-A`` module, Django's
    ``proj/__init__.py`` importing it), and be the only one: with none or several, the
    decorator raises, saying so, rather than guess.

    Example (in a process whose one app is ``shop``'s)::

        @shared_task(queue="emails")
        def send_welcome(user_id: int) -> None: ...

        send_welcome.app      # shop's app: the task is registered there

    Raises:
        ConfigurationError: no app, or several; an option ``@app.task`` refuses.
    """
    if fn:
        return only_app(f"@shared_task on {fn[0].__qualname__}").task(fn[0], **options)
    return lambda f: only_app(f"@shared_task on {f.__qualname__}").task(f, **options)


def only_app(what: str, instead: str = "use @app.task on the app the task belongs to") -> Celeriac:
    """The one app this process has made.

    Raises:
        ConfigurationError: none yet, or several (``what`` names the caller, ``instead``
            what to write then).
    """
    if len(_APPS) > 1:
        # An app dropped and not yet freed (its tasks refer back to it). Not while a list
        # of the apps is held: it kept the dropped one alive through the collection.
        gc.collect()
    apps = list(_APPS)
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise ConfigurationError(
            f"{what}: no Celeriac app exists yet in this process. Import the module that "
            "makes it first (a worker's -A module does; in Django, import it in "
            f"proj/__init__.py), or {instead} with the app imported"
        )
    names = ", ".join(sorted(repr(app.name) for app in apps))
    raise ConfigurationError(
        f"{what}: this process has {len(apps)} Celeriac apps ({names}), and which one is "
        f"meant would be a guess: {instead}"
    )


explain_celerys_names(Celeriac)  # app.control and the like: what to use instead
