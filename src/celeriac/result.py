"""AsyncResult: a handle on a task's result, from any process that knows the id.

GroupResult, the handle on a group's, is in :mod:`celeriac.group_result`.

States: PENDING (nothing stored yet: queued, or unknown), RECEIVED, STARTED, RETRY, and the
final ones SUCCESS, FAILURE, REVOKED, EXPIRED.
"""

from __future__ import annotations

import ast
import builtins
import datetime as dt
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from celeriac.celery_names import explain_celerys_names
from celeriac.errors import (
    BrokerConnectionError,
    BrokerError,
    GetInsideTask,
    ResultTimeout,
    TaskExpired,
    TaskFailed,
    TaskRevoked,
)
from celeriac.message import ErrorInfo, ResultRecord, decode_result
from celeriac.task import _current, unimportable_note

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.group_result import GroupResult

R = TypeVar("R")

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
EXPIRED = "EXPIRED"
FINAL_STATES = frozenset({SUCCESS, FAILURE, REVOKED, EXPIRED})

_FOREVER = 10 * 365 * 86_400.0
LAST_LOOK_SECONDS = 0.5  # aget's one read after its deadline (see _last_look)
# A workflow handle's timeout reads at most this many of its earlier tasks' results: a
# caller polling get(timeout=1) on a chord of 10,000 read them all every second.
_PROGRESS_READ_MAX = 1_000


class AsyncResult(Generic[R]):
    """The state and value of one task: ``app.AsyncResult(id)``, or as Celery code writes
    it, ``AsyncResult(id)`` in a process with one app (``app=`` picks one of several).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> r = app.AsyncResult("no-such-id")
        >>> r.state
        'PENDING'
    """

    __slots__ = ("_workflow", "app", "id", "task_name")

    def __init__(self, task_id: str, app: Celeriac | None = None, task_name: str = "") -> None:
        self.id = task_id
        if app is None:
            from celeriac.app import only_app

            app = only_app(f"AsyncResult({task_id!r})", "use app.AsyncResult(id)")
        self.app = app
        self.task_name = task_name
        # The other tasks of the workflow whose handle this is (a chain's earlier steps, a
        # chord's header), set by the send that returned it: revoke() and forget() reach
        # them too. Empty for a handle made from an id alone.
        self._workflow: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_name}[{self.id}]>"

    def _record(self) -> ResultRecord | None:
        stored = self.app.broker.get_result(self.id)
        return decode_result(stored[0]) if stored else None

    @property
    def state(self) -> str:
        """The task's state now (one broker read)."""
        record = self._record()
        return record.state if record else PENDING

    @property
    def info(self) -> Any:
        """The value when done, the error when failed, progress meta while running."""
        record = self._record()
        if record is None:
            return None
        if record.error is not None:
            return _rebuild(record, self.id, self.task_name)
        return record.result if record.state == SUCCESS else record.meta

    # Celery's names, for code that moves over: one broker read each, as state and info.

    @property
    def status(self) -> str:
        """Celery's name for :attr:`state`."""
        return self.state

    @property
    def result(self) -> Any:
        """Celery's name for :attr:`info`: the value, the error, or progress meta."""
        return self.info

    @property
    def task_id(self) -> str:
        """Celery's name for :attr:`id`."""
        return self.id

    @property
    def name(self) -> str:
        """The task's name: the one it was sent as, else the one its result records."""
        if self.task_name:
            return self.task_name
        record = self._record()
        return record.task if record else ""

    @property
    def traceback(self) -> str | None:
        """The worker's traceback text of a failure (it starts at the task's own frame);
        None while there is none."""
        record = self._record()
        return record.error.traceback if record and record.error else None

    @property
    def date_done(self) -> dt.datetime | None:
        """When the task reached its final state (UTC), or None before then."""
        record = self._record()
        if record is None or record.date_done is None or record.state not in FINAL_STATES:
            return None
        return dt.datetime.fromtimestamp(record.date_done, dt.UTC)

    def ready(self) -> bool:
        """True when the task reached a final state."""
        return self.state in FINAL_STATES

    def successful(self) -> bool:
        """True when the task succeeded."""
        return self.state == SUCCESS

    def failed(self) -> bool:
        """True when the task failed."""
        return self.state == FAILURE

    @overload
    def get(
        self,
        timeout: float | None = None,
        propagate: Literal[True] = True,
        disable_sync_subtasks: bool = True,
        *,
        interval: float | None = None,
    ) -> R: ...

    @overload
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        *,
        interval: float | None = None,
    ) -> R | BaseException: ...

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        *,
        interval: float | None = None,
    ) -> R | BaseException:
        """Wait for the task's value; re-raise its exception when it failed, or with
        ``propagate=False`` return that exception (``TaskRevoked``, ``TaskExpired``...)
        instead of raising it, so a failure never reads as a task that returned None.

        Inside a running task this is refused (:class:`GetInsideTask`), even for a result
        already stored: chain the steps instead. Pass ``disable_sync_subtasks=False`` only
        when the awaited task runs on a queue other workers serve. ``interval`` (Celery's
        polling interval) is accepted and unused: the result wakes the wait.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.testing import run_queued
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task(name="shop.child")
            ... def child(x: int) -> int:
            ...     return x + 1
            >>> @app.task(name="shop.parent")
            ... def parent(x: int) -> int:
            ...     return child.delay(x).get(timeout=5)  # holds the slot child needs
            >>> r = parent.delay(1)
            >>> run_queued(app, fail_fast=False)
            2
            >>> r.get(timeout=1)
            Traceback (most recent call last):
            ...
            celeriac.errors.GetInsideTask: task shop.parent[...] called get() on shop.child[...] ...

        Raises:
            ResultTimeout: not finished within ``timeout`` seconds (a ``TimeoutError``).
            GetInsideTask: called inside a running task (a ``RuntimeError``).
        """
        check_timeout(timeout, "get()", interval)
        if disable_sync_subtasks:
            refuse_inside_a_task(self, "get()")
        raw = self._on_the_loop()
        if raw is None:
            raw = self._wait(timeout)
        return self._outcome(raw, timeout, propagate, self._progress() if raw is None else "")

    def _on_the_loop(self) -> bytes | None:
        """On a running event loop's thread: the final result if stored already, else a
        warning that the wait will block the loop (see :func:`warn_on_the_loop`). None
        off the loop, where nothing is read here."""
        if not on_a_running_loop():
            return None
        stored = self.app.broker.get_result(self.id)
        if stored is not None and stored[1]:
            return stored[0]  # final: nothing will block (an eager test's get(), say)
        warn_on_the_loop("get()", stacklevel=4)
        return None

    def _wait(self, timeout: float | None) -> bytes | None:
        """The final result, waited for up to ``timeout`` seconds (None: not in time)."""
        return self.app.broker.wait_result(self.id, _FOREVER if timeout is None else timeout)

    @overload
    async def aget(
        self,
        timeout: float | None = None,
        propagate: Literal[True] = True,
        disable_sync_subtasks: bool = True,
        *,
        interval: float | None = None,
    ) -> R: ...

    @overload
    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        *,
        interval: float | None = None,
    ) -> R | BaseException: ...

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        *,
        interval: float | None = None,
    ) -> R | BaseException:
        """Async face of :meth:`get`; refused inside a running task too (an ``-P asyncio``
        child whose every slot awaits a subtask has none left to run it).

        Example:
            >>> import asyncio
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> asyncio.run(app.AsyncResult("never-sent").aget(timeout=0.05))
            Traceback (most recent call last):
            ...
            celeriac.errors.ResultTimeout: task ?[never-sent] did not finish within 0.05s; ...
        """
        check_timeout(timeout, "aget()", interval)
        if disable_sync_subtasks:
            refuse_inside_a_task(self, "aget()")
        raw = await self._await(timeout)
        progress = await self._aprogress() if raw is None else ""
        return self._outcome(raw, timeout, propagate, progress)

    def _progress(self) -> str:
        """For a timeout of a workflow's handle: how far the tasks before this one got.

        A chord whose header waited on a member (stuck on a queue no worker serves) timed
        out saying only that its body "may still be queued or running": it was not even
        sent, and the member to look at went unnamed.
        """
        if not self._workflow:
            return ""
        checked = self._workflow[:_PROGRESS_READ_MAX]
        try:
            found = self.app.broker.get_results(list(checked))
        except BrokerError:  # the timeout is the error to raise, not this read's
            return ""
        return _progress_note(checked, found, len(self._workflow))

    async def _aprogress(self) -> str:
        """Async face of :meth:`_progress`, bounded like :meth:`_last_look`."""
        if not self._workflow:
            return ""
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        checked = self._workflow[:_PROGRESS_READ_MAX]
        try:
            async with asyncio.timeout(LAST_LOOK_SECONDS):
                found = await self.app.broker.aget_results(list(checked))
        except (BrokerError, TimeoutError):
            return ""
        return _progress_note(checked, found, len(self._workflow))

    async def _await(self, timeout: float | None) -> bytes | None:
        """Async face of :meth:`_wait`."""
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        wait = _FOREVER if timeout is None else timeout
        # The broker's wait may run in steps on the loop's default thread pool, shared by
        # every waiter: 200 waiters on 6 threads took 9 s to report a 1 s timeout. The
        # deadline is kept here, on the loop's clock, whatever the broker does.
        limit = asyncio.timeout(wait)
        try:
            async with limit:
                raw = await self.app.broker.await_result(self.id, wait)
        except TimeoutError:
            if not limit.expired():  # not our deadline: the broker's own error
                raise
            raw = await self._last_look()
        return raw

    async def _last_look(self) -> bytes | None:
        """The final result if stored, read once after our deadline passed.

        The deadline can cancel the broker's wait before it looked even once (a thread
        hop, a round trip): ``aget(timeout=0)`` of a finished task raised ResultTimeout.
        Bounded, so a busy thread pool cannot delay the timeout's report for long.
        """
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        broker = self.app.broker
        try:
            async with asyncio.timeout(LAST_LOOK_SECONDS):
                stored = await broker.aget_result(self.id)
        except TimeoutError:
            if broker.async_native:
                # A frozen Redis: said as get() says it, not as the task's slowness ("it
                # may still be queued or running"), which sent an operator to the workers.
                raise BrokerConnectionError(
                    f"could not read the result of task {self.task_name or '?'}[{self.id}]: "
                    f"the broker did not answer within {LAST_LOOK_SECONDS:g}s after the wait "
                    "ended (stopped, frozen or overloaded: redis-cli PING, SLOWLOG GET). The "
                    "task may have finished; ask again once it answers."
                ) from None
            return None  # a busy pool of threads (SQLite): the timeout is what to report
        return stored[0] if stored is not None and stored[1] else None

    def _outcome(
        self, raw: bytes | None, timeout: float | None, propagate: bool, progress: str = ""
    ) -> R | BaseException:
        if raw is None:
            raise ResultTimeout(
                f"task {self.task_name or '?'}[{self.id}] did not finish within "
                f"{seconds_text(timeout)}{progress}; "
                f"{unfinished_note(self.app, [self.task_name])}"
            )
        record = decode_result(raw)
        if record.state == SUCCESS:
            value: R = record.result
            return value
        # The failure as a value with propagate=False: its result field is empty, and a
        # None here read as a task that succeeded and returned None.
        error = _rebuild(record, self.id, self.task_name)
        if propagate:
            raise error
        return error

    def revoke(self, terminate: bool = False) -> None:
        """Stop this task from running; with ``terminate``, also stop it if it is running.

        The handle a chain or chord returned when sent revokes the whole workflow: every
        step of the chain, the chord's header members and body (in one broker call), so
        none that has not started runs. A step already running finishes (unless
        ``terminate``) and keeps its outcome (it is not marked REVOKED meanwhile: its
        waiters get that outcome); a step already finished is left as it is. Every other
        step then reads REVOKED (a step revoked alone makes the steps after it end
        FAILURE with its ``TaskRevoked``); either way the handle's ``get()`` raises
        ``TaskRevoked``. A handle made from an id alone
        (``app.AsyncResult(id)``) knows only its own task. The revoke is stored in the
        broker, so a worker that starts later honours it too.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.errors import TaskRevoked
            >>> from celeriac.testing import run_queued
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task
            ... def add(x: int, y: int) -> int:
            ...     return x + y
            >>> r = (add.s(1, 2) | add.s(3)).apply_async()
            >>> r.revoke()
            >>> run_queued(app, fail_fast=False)  # each step is settled, none runs
            2
            >>> isinstance(r.get(timeout=1, propagate=False), TaskRevoked)
            True
        """
        from celeriac.control import revoke_many

        revoke_many(self.app, [*self._workflow, self.id], terminate=terminate)

    def forget(self) -> None:
        """Delete the stored result, and a chord's saved header (``GroupResult.restore``).

        The handle a chain or chord returned when sent also deletes the results of the
        workflow's other tasks (earlier steps, header members).
        """
        self._forget_results()
        # A chord's header is saved under the chord's id (the body's); no task id is ever
        # a group's id (members are <group id>:<i>), so for a plain task this deletes
        # nothing, and a handle made from a chord's id alone forgets its header too.
        self.app.broker.kv_delete(group_key(self.id))

    def _forget_results(self) -> None:
        if self._workflow:  # one round trip for the workflow's tasks
            self.app.broker.forget_results((*self._workflow, self.id))
        else:
            self.app.broker.forget_result(self.id)


def group_key(group_id: str) -> str:
    """The store key a group's membership is saved under (``GroupResult.save``).

    Example:
        >>> group_key("g1")
        'celeriac:group:g1'
    """
    return f"celeriac:group:{group_id}"


def unfinished_note(app: Celeriac, task_names: Sequence[str]) -> str:
    """What a missing final result can mean, for a timeout's message.

    Nothing stored looks the same whether the task is still queued, or finished long ago
    and its result expired or was forgotten, or it never stores one (``ignore_result``):
    "it may still run" alone sent people to check workers that had done the work.
    """
    it, its = ("they", "their") if len(task_names) > 1 else ("it", "its")
    gone = (
        f"or {it} finished and {its} result is gone: results are kept "
        f"result_expires={app.conf.result_expires:g}s, and forget() deletes them."
    )
    if app.conf.task_always_eager:  # no worker to look for: sends ran what was due
        text = (
            "in eager mode (task_always_eager) a send runs only what is due: a countdown, "
            "an eta or a retry's backoff waits for run_queued(app, include_delayed=True)."
        )
    elif app.broker.in_process_only:
        # A test that sent without running: "check celeriac status" for a broker no other
        # process can see.
        text = (
            f"{it} may still be queued, on the {app.conf.broker_url} broker, which lives in "
            "this process: no worker takes its tasks, celeriac.testing.run_queued(app) runs "
            f"them (or task_always_eager=True); {gone}"
        )
    else:
        text = (
            f"{it} may still be queued or running (check `celeriac status` for live workers "
            f"on {its} queue: this process's broker is {_broker_shown(app)}); {gone}"
        )
    text += "".join(unimportable_note(n) for n in sorted(set(task_names)))
    quiet = sorted({n for n in task_names if _ignores_result(app, n)})
    if quiet:
        text += (
            f" Note: {', '.join(quiet)} ignores its result (ignore_result=True), so its "
            "success stores nothing to wait for (except as a workflow step)."
        )
    return text


def _broker_shown(app: Celeriac) -> str:
    """The broker a timeout's reader should look at: its URL, secrets hidden, and a SQLite
    URL's file (a producer started from another folder made a file of its own there, and
    its get() timed out naming neither). No broker call: the broker may be what hangs."""
    from celeriac.brokers import redacted, sqlite_path

    url = app.conf.broker_url
    path = sqlite_path(url)
    return redacted(url) + (f", the file {os.path.abspath(path)}" if path else "")


def _ignores_result(app: Celeriac, task_name: str) -> bool:
    task = app.tasks.get(task_name)
    return task is not None and task.ignores_result


def _progress_note(
    ids: Sequence[str], found: Sequence[tuple[bytes, bool] | None], total: int
) -> str:
    """How many of a workflow's earlier tasks (the first ``ids`` of ``total``, their
    stored results ``found``) have not finished, naming a few, for a timeout's message.

    Example:
        >>> _progress_note(["w:h:0", "w:h:1"], [(b"{}", True), None], 2).partition(", and ")[2]
        '1 of them has not finished (w:h:1)'
        >>> _progress_note(["w:s0"], [(b"{}", True)], 1)
        '; the task before it in its workflow finished'
    """
    waiting = [i for i, stored in zip(ids, found, strict=True) if stored is None or not stored[1]]
    before = f"the {total:,} tasks before it" if total > 1 else "the task before it"
    of = "them" if len(ids) == total else f"the first {len(ids):,}"
    if not waiting:
        first = "" if len(ids) == total else f"{of} of "
        return f"; {first}{before} in its workflow finished"
    shown = ", ".join(waiting[:3]) + (", ..." if len(waiting) > 3 else "")
    if total == 1:
        return f"; it waits for {before} in its workflow, which has not finished ({shown})"
    verb = "has" if len(waiting) == 1 else "have"
    return (
        f"; it waits for {before} in its workflow, and {len(waiting):,} of {of} {verb} not "
        f"finished ({shown})"
    )


def seconds_text(timeout: float | None) -> str:
    """A timeout as a timeout error says it.

    "0.3s", not "0.2999894599997788s" (what a group's member had left of its timeout).

    Example:
        >>> seconds_text(0.30000001), seconds_text(None)
        ('0.3s', 'forever')
    """
    return "forever" if timeout is None else f"{timeout:g}s"


def check_timeout(timeout: float | None, call: str, interval: object = None) -> None:
    """Refuse a NaN timeout: no comparison with NaN is ever true, so no deadline passed.
    ``get(timeout=nan)`` waited forever at full CPU (and ``aget`` timed out at once).

    ``interval`` is Celery's polling interval: accepted so that Celery's code runs, and
    unused (a wait is woken by the result, not polled), but refused when it is not a
    number of seconds, as Celery would refuse it.

    Example:
        >>> check_timeout(None, "get()"), check_timeout(0, "get()", 0.5)
        (None, None)
        >>> check_timeout(float("nan"), "get()")
        Traceback (most recent call last):
        ValueError: get(timeout=nan): the timeout is not a number of seconds; ...
    """
    if timeout is not None and math.isnan(timeout):
        raise ValueError(
            f"{call[:-1]}timeout={timeout}): the timeout is not a number of seconds; pass "
            "seconds, or None to wait without a limit"
        )
    if interval is not None and (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not interval >= 0  # NaN too
    ):
        raise ValueError(
            f"{call[:-1]}interval={interval!r}): Celery's polling interval, in seconds; "
            "celeriac does not poll (a wait is woken by the result), so any number will do, "
            "or leave it out"
        )


def time_left(deadline: float | None) -> float | None:
    """Seconds until a ``time.monotonic()`` deadline, at least 0; None for no deadline.

    Example:
        >>> time_left(None), time_left(0.0)
        (None, 0.0)
    """
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def on_a_running_loop() -> bool:
    """Whether this thread runs an event loop now (cheap: asyncio is not imported for it).

    Example:
        >>> on_a_running_loop()
        False
    """
    asyncio = sys.modules.get("asyncio")  # not imported: no loop can be running
    return asyncio is not None and asyncio._get_running_loop() is not None


def warn_on_the_loop(call: str, stacklevel: int = 3) -> None:
    """Warn when a blocking wait (``get()``) that will block is called on a running event
    loop's thread: every request of an async web server stood still until the result
    came (up to its timeout), with no word of why. ``await ...aget()`` waits without
    blocking.

    Example:
        >>> warn_on_the_loop("get()")  # no loop running here: nothing to say
    """
    if not on_a_running_loop():
        return
    warnings.warn(
        f"{call} called on a running event loop's thread: it blocks every other coroutine "
        f"of the loop until the result comes; use await ...a{call} instead",
        RuntimeWarning,
        stacklevel=stacklevel,  # the line that called get()
    )


def refuse_inside_a_task(awaited: AsyncResult[Any] | GroupResult, call: str) -> None:
    """Raise :class:`GetInsideTask` when a worker (or ``run_queued``, or eager mode) is
    running a task in this context.

    In-process runs are refused too: ``run_queued`` runs one task at a time, so the wait
    would never end, and eager mode must fail where production would rather than pass.
    """
    request = _current.get()
    if request is None:
        return
    if isinstance(awaited, AsyncResult):
        what = f"{awaited.task_name or '?'}[{awaited.id}]"
    else:
        what = f"group {awaited.id} ({len(awaited)} members)"
    raise GetInsideTask(
        f"task {request.task}[{request.id}] called {call} on {what} while it runs: refused, "
        "as the wait holds this worker's slot while the awaited task needs one (with -c 1, "
        "or every slot waiting like this, it hangs until the soft time limit). Chain the "
        "steps instead (first.s() | then.s()), or use a chord for many. If the awaited task "
        f"runs on a queue that other workers serve, pass {call[:-1]}disable_sync_subtasks=False)."
    )


def _rebuild(record: ResultRecord, task_id: str, name: str = "") -> BaseException:
    """The task's exception as its own type when that type is loaded here, else TaskFailed.
    ``name``: the handle's task name, for a record that names none (a revoke mark: "task
    ?[id] was revoked" from the handle delay() returned)."""
    label = f"{record.task or name or '?'}[{task_id}]"
    error = record.error
    if record.state == EXPIRED:
        # The worker's reason says how late, and whether earlier runs (retries) failed.
        why = error.message if error and error.message else "expired before a worker started it"
        return TaskExpired(f"task {label} {why}")
    if record.state == REVOKED:
        return TaskRevoked(f"task {label} was revoked")
    if error is None:
        return TaskFailed(f"task {label} ended {record.state} without an error")
    cls = _loaded_exception_type(error.type)
    exc = _from_args(cls, error) if cls is not None else None
    try:
        exc = exc or (
            cls(_key_error_arg(error.message) if issubclass(cls, KeyError) else error.message)
            if cls is not None
            else TaskFailed(f"{error.type}: {error.message}", error.type, error.traceback)
        )
    except Exception:  # noqa: BLE001 - a type whose __init__ wants other arguments
        exc = TaskFailed(f"{error.type}: {error.message}", error.type, error.traceback)
    if error.traceback:
        exc.add_note(f"Remote traceback of task {label}:\n{error.traceback}")
    return exc


def _from_args(cls: type[BaseException], error: ErrorInfo) -> BaseException | None:
    """``cls(*args)`` when the error kept its args and they give back its message: its own
    attributes come back (an HTTP status, an errno), not its text in their place. None
    otherwise (an OSError's filename is not in its args: its text says more)."""
    if error.args is None:
        return None
    try:
        exc = cls(*error.args)
        return exc if str(exc) == error.message else None
    except Exception:  # noqa: BLE001 - a type whose __init__ or __str__ wants otherwise
        return None


def _key_error_arg(message: str) -> Any:
    """The key a KeyError was raised with, from its stored text.

    ``str(KeyError("sku-1"))`` is ``"'sku-1'"`` (the key's repr): rebuilt from that text,
    ``e.args[0]`` was ``"'sku-1'"``, quotes included, and ``str(e)`` quoted it twice.

    Example:
        >>> _key_error_arg("'sku-1'"), _key_error_arg("42"), _key_error_arg("no repr")
        ('sku-1', 42, 'no repr')
    """
    try:
        return ast.literal_eval(message)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return message


def _loaded_exception_type(qualified: str) -> type[BaseException] | None:
    # Only types from modules already imported here: a result must never trigger an import.
    module_name, _, name = qualified.rpartition(".")
    module = builtins if module_name == "builtins" else sys.modules.get(module_name)
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, Exception):
        return obj
    return None


explain_celerys_names(AsyncResult)  # app.control and the like: what to use instead
