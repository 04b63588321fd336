"""AsyncResult: a handle on a task's state and value, from any process that knows its id.

States: PENDING (nothing stored yet: queued, or unknown), RECEIVED, STARTED, RETRY, and the
final ones SUCCESS, FAILURE, REVOKED, EXPIRED.
"""

from __future__ import annotations

import builtins
import sys
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac.errors import ResultTimeout, TaskExpired, TaskFailed, TaskRevoked
from celeriac.message import ResultRecord, decode_result

if TYPE_CHECKING:
    from celeriac.app import Celeriac

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


class AsyncResult(Generic[R]):
    """The state and value of one task.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> r = app.AsyncResult("no-such-id")
        >>> r.state
        'PENDING'
    """

    __slots__ = ("app", "id", "task_name")

    def __init__(self, task_id: str, app: Celeriac, task_name: str = "") -> None:
        self.id = task_id
        self.app = app
        self.task_name = task_name

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
            return _rebuild(record, self.id)
        return record.result if record.state == SUCCESS else record.meta

    def ready(self) -> bool:
        """True when the task reached a final state."""
        return self.state in FINAL_STATES

    def successful(self) -> bool:
        """True when the task succeeded."""
        return self.state == SUCCESS

    def failed(self) -> bool:
        """True when the task failed."""
        return self.state == FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the task's value; re-raise its exception when it failed.

        Raises:
            ResultTimeout: not finished within ``timeout`` seconds (a ``TimeoutError``).
        """
        raw = self.app.broker.wait_result(self.id, _FOREVER if timeout is None else timeout)
        return self._outcome(raw, timeout, propagate)

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Async face of :meth:`get`."""
        raw = await self.app.broker.await_result(self.id, _FOREVER if timeout is None else timeout)
        return self._outcome(raw, timeout, propagate)

    def _outcome(self, raw: bytes | None, timeout: float | None, propagate: bool) -> R:
        if raw is None:
            raise ResultTimeout(
                f"task {self.task_name or '?'}[{self.id}] did not finish within {timeout}s; "
                "it may still run. Check `celeriac status` for live workers on its queue."
            )
        record = decode_result(raw)
        if record.state == SUCCESS or not propagate:
            value: R = record.result
            return value
        raise _rebuild(record, self.id)

    def revoke(self, terminate: bool = False) -> None:
        """Stop this task from running; with ``terminate``, also stop it if it is running.

        The revoke is stored in the broker, so a worker that starts later honours it too.
        """
        from celeriac.control import revoke

        revoke(self.app, self.id, terminate=terminate)

    def forget(self) -> None:
        """Delete the stored result."""
        self.app.broker.forget_result(self.id)

    def wait_until(self, predicate: str, timeout: float) -> str:
        """Poll (every 10 ms) until the state equals ``predicate``; return the last state."""
        deadline = time.monotonic() + timeout
        state = self.state
        while state != predicate and time.monotonic() < deadline:
            time.sleep(0.01)
            state = self.state
        return state


def _rebuild(record: ResultRecord, task_id: str) -> BaseException:
    """The task's exception as its own type when that type is loaded here, else TaskFailed."""
    label = f"{record.task or '?'}[{task_id}]"
    if record.state == EXPIRED:
        return TaskExpired(f"task {label} expired before a worker started it")
    if record.state == REVOKED:
        return TaskRevoked(f"task {label} was revoked")
    error = record.error
    if error is None:
        return TaskFailed(f"task {label} ended {record.state} without an error")
    exc: BaseException
    cls = _loaded_exception_type(error.type)
    try:
        exc = (
            cls(error.message)
            if cls is not None
            else TaskFailed(f"{error.type}: {error.message}", error.type, error.traceback)
        )
    except Exception:  # noqa: BLE001 - a type whose __init__ wants other arguments
        exc = TaskFailed(f"{error.type}: {error.message}", error.type, error.traceback)
    if error.traceback:
        exc.add_note(f"Remote traceback of task {label}:\n{error.traceback}")
    return exc


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
