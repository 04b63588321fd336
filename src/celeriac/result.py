"""AsyncResult and GroupResult: handles on results, from any process that knows the id.

States: PENDING (nothing stored yet: queued, or unknown), RECEIVED, STARTED, RETRY, and the
final ones SUCCESS, FAILURE, REVOKED, EXPIRED.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import msgspec

from celeriac.errors import GetInsideTask, ResultTimeout, TaskExpired, TaskFailed, TaskRevoked
from celeriac.message import ResultRecord, decode_result
from celeriac.task import _current

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
_LAST_LOOK_SECONDS = 0.5  # aget's one read after its deadline (see _last_look)
# iter_completed blocks on its oldest unfinished member (woken by its commit) for at least
# this long before it reads the others once, for members finishing out of order; and for
# _SWEEP_SHARE times as long as that read took, so a large group's reads stay a small
# share of the waiter's time, on a slow link too (a read of all members is one round trip:
# ~16 ms for 10,000 on a local Redis; it was one per member, ~0.5 s). get() reads the rest
# after a commit woke its wait, as often as the same share allows.
_SWEEP_SECONDS = 1.0
_SWEEP_SHARE = 20


class AsyncResult(Generic[R]):
    """The state and value of one task.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> r = app.AsyncResult("no-such-id")
        >>> r.state
        'PENDING'
    """

    __slots__ = ("_workflow", "app", "id", "task_name")

    def __init__(self, task_id: str, app: Celeriac, task_name: str = "") -> None:
        self.id = task_id
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

    @overload
    def get(
        self,
        timeout: float | None = None,
        propagate: Literal[True] = True,
        disable_sync_subtasks: bool = True,
    ) -> R: ...

    @overload
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
    ) -> R | BaseException: ...

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
    ) -> R | BaseException:
        """Wait for the task's value; re-raise its exception when it failed, or with
        ``propagate=False`` return that exception (``TaskRevoked``, ``TaskExpired``...)
        instead of raising it, so a failure never reads as a task that returned None.

        Inside a running task this is refused (:class:`GetInsideTask`), even for a result
        already stored: chain the steps instead. Pass ``disable_sync_subtasks=False`` only
        when the awaited task runs on a queue other workers serve.

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
        if disable_sync_subtasks:
            _refuse_inside_a_task(self, "get()")
        return self._outcome(self._wait(timeout), timeout, propagate)

    def _wait(self, timeout: float | None) -> bytes | None:
        """The final result, waited for up to ``timeout`` seconds (None: not in time)."""
        return self.app.broker.wait_result(self.id, _FOREVER if timeout is None else timeout)

    @overload
    async def aget(
        self,
        timeout: float | None = None,
        propagate: Literal[True] = True,
        disable_sync_subtasks: bool = True,
    ) -> R: ...

    @overload
    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
    ) -> R | BaseException: ...

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
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
        if disable_sync_subtasks:
            _refuse_inside_a_task(self, "aget()")
        return self._outcome(await self._await(timeout), timeout, propagate)

    async def _await(self, timeout: float | None) -> bytes | None:
        """Async face of :meth:`_wait`."""
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
        try:
            async with asyncio.timeout(_LAST_LOOK_SECONDS):
                stored = await self.app.broker.aget_result(self.id)
        except TimeoutError:
            return None
        return stored[0] if stored is not None and stored[1] else None

    def _outcome(
        self, raw: bytes | None, timeout: float | None, propagate: bool
    ) -> R | BaseException:
        if raw is None:
            raise ResultTimeout(
                f"task {self.task_name or '?'}[{self.id}] did not finish within "
                f"{_seconds(timeout)}; {_unfinished(self.app, [self.task_name])}"
            )
        record = decode_result(raw)
        if record.state == SUCCESS:
            value: R = record.result
            return value
        # The failure as a value with propagate=False: its result field is empty, and a
        # None here read as a task that succeeded and returned None.
        error = _rebuild(record, self.id)
        if propagate:
            raise error
        return error

    def revoke(self, terminate: bool = False) -> None:
        """Stop this task from running; with ``terminate``, also stop it if it is running.

        The handle a chain or chord returned when sent revokes the whole workflow: every
        step of the chain, the chord's header members and body (in one broker call), so
        none that has not started runs. A step already running finishes (unless
        ``terminate``) and keeps its outcome; a step already finished is left as it is.
        The steps after a revoked one end FAILURE with its ``TaskRevoked``, so the
        handle's ``get()`` raises ``TaskRevoked``. A handle made from an id alone
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
        self.app.broker.kv_delete(_group_key(self.id))

    def _forget_results(self) -> None:
        for task_id in (*self._workflow, self.id):
            self.app.broker.forget_result(task_id)


class GroupResult:
    """The results of a group's members, in member order (a member may be a group itself).

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.canvas import group
        >>> from celeriac.testing import run_queued
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def double(x: int) -> int:
        ...     return 2 * x
        >>> g = group(double.s(i) for i in range(3)).apply_async()
        >>> run_queued(app)
        3
        >>> g.get(timeout=1), g.completed_count()
        ([0, 2, 4], 3)
        >>> later = group(double.s(i) for i in range(2)).apply_async()
        >>> later.revoke()
        >>> run_queued(app), later.results[0].state
        (2, 'REVOKED')
    """

    __slots__ = ("_workflow", "app", "id", "results")

    def __init__(
        self, group_id: str, results: Sequence[AsyncResult[Any] | GroupResult], app: Celeriac
    ) -> None:
        self.id = group_id
        self.results = list(results)
        self.app = app
        # The steps of the chain this group ends, when it does (see AsyncResult._workflow).
        self._workflow: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} ({len(self.results)} members)>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any] | GroupResult]:
        """The members in the order they finish; waits for each."""
        return self.iter_completed()

    def iter_completed(
        self, timeout: float | None = None, disable_sync_subtasks: bool = True
    ) -> Iterator[AsyncResult[Any] | GroupResult]:
        """Yield the members as they finish (in any final state), first finished first.

        Reads each member once, then blocks on the oldest unfinished one: its commit wakes
        the wait, and it is yielded with no other read. While that member is still running,
        the others are read again now and then (after a second at first; the larger the
        group, the less often), so a member finishing out of order is yielded within that
        time. A member is never read again once yielded.

        Refused inside a running task, as :meth:`get` is.

        Raises:
            ResultTimeout: some member did not finish within ``timeout`` seconds.
            GetInsideTask: called inside a running task (a ``RuntimeError``).
        """
        if disable_sync_subtasks:
            _refuse_inside_a_task(self, "iter_completed()")
        deadline = None if timeout is None else time.monotonic() + timeout
        # Not a read of every unfinished member per wake-up: a group of 10,000 cost Redis
        # 10,000 reads per pass, every 50 ms, for as long as the caller waited.
        pending: deque[AsyncResult[Any] | GroupResult] = deque()
        for member, done in zip(self.results, _finished(self.results), strict=True):
            if done:
                yield member
            else:
                pending.append(member)
        pause = _SWEEP_SECONDS
        while pending:
            left = _left(deadline)
            if left is not None and left <= 0:
                raise self._timeout_error(timeout, [m.id for m in pending])
            if _wait_for(pending[0], pause if left is None else min(pause, left)):
                yield pending.popleft()
                continue
            started = time.monotonic()
            still: deque[AsyncResult[Any] | GroupResult] = deque()
            for member, done in zip(pending, _finished(pending), strict=True):
                if done:
                    yield member
                else:
                    still.append(member)
            pending = still
            pause = max(_SWEEP_SECONDS, _SWEEP_SHARE * (time.monotonic() - started))

    @property
    def state(self) -> str:
        """PENDING until every member finished; then SUCCESS, or the first failure's state."""
        return self.summary().state

    def revoke(self, terminate: bool = False) -> None:
        """Revoke every member (of nested groups too) in one broker call; with
        ``terminate``, running members are stopped as well (example: the class's).
        """
        from celeriac.control import revoke_many

        revoke_many(self.app, self._task_ids(), terminate=terminate)

    def _task_ids(self) -> list[str]:
        """Every task of the group: members, nested groups' members, the earlier steps of
        members that are chains, and of the chain this group ends."""
        ids: list[str] = list(self._workflow)
        for member in self.results:
            if isinstance(member, GroupResult):
                ids.extend(member._task_ids())
            else:
                ids.extend((*member._workflow, member.id))
        return ids

    def completed_count(self) -> int:
        """How many members finished, successfully or not; a nested group counts once, when
        all of it finished. One broker round trip for the whole group, as every read of
        many members here (:meth:`ready`, :meth:`state`, :meth:`get`...)."""
        found = _read(self.results)
        return sum(1 for member in self.results if _done(member, found))

    def ready(self) -> bool:
        """True when every member finished."""
        found = _read(self.results)
        return all(_done(member, found) for member in self.results)

    def successful(self) -> bool:
        """True when every member succeeded."""
        found = _read(self.results)
        return all(state == SUCCESS for state in _states(self.results, found))

    def failed(self) -> bool:
        """True when some member failed."""
        found = _read(self.results)
        return any(state == FAILURE for state in _states(self.results, found))

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        """Wait for every member; return their values in member order.

        Refused inside a running task, as :meth:`AsyncResult.get` is.

        Raises:
            ResultTimeout: not all finished within ``timeout`` seconds.
            GetInsideTask: called inside a running task (a ``RuntimeError``).
            Exception: the first failed member's exception (with ``propagate``), as soon
                as every member before it finished.
        """
        if disable_sync_subtasks:
            _refuse_inside_a_task(self, "get()")
        deadline = None if timeout is None else time.monotonic() + timeout
        gathered = _Gathering(self.results, propagate)
        gathered.learn(_read_tasks(gathered.unknown()))
        # A wait for each member in turn, but not a read of each: the first read above
        # found those already finished, and each commit that wakes the wait is followed by
        # a read of the rest while that costs a small share of the time (on Redis, every
        # member's wait cost 5 round trips: 2,000 finished members took 1.3 s, not 10 ms).
        while (task := gathered.first_unknown()) is not None:
            raw = task._wait(_left(deadline))
            if raw is None:
                raise self._timed_out(timeout)
            gathered.found(task, raw)
            if gathered.read_due():
                gathered.learn(_read_tasks(gathered.unknown()))
        return gathered.values()

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        """Async face of :meth:`get`."""
        if disable_sync_subtasks:
            _refuse_inside_a_task(self, "aget()")
        deadline = None if timeout is None else time.monotonic() + timeout
        gathered = _Gathering(self.results, propagate)
        await self._aread_rest(gathered, deadline, timeout)
        while (task := gathered.first_unknown()) is not None:
            raw = await task._await(_left(deadline))
            if raw is None:
                raise await self._atimed_out(timeout)
            gathered.found(task, raw)
            if gathered.read_due():
                await self._aread_rest(gathered, deadline, timeout)
        return gathered.values()

    async def _aread_rest(
        self, gathered: _Gathering, deadline: float | None, timeout: float | None
    ) -> None:
        """One read for :meth:`aget`, kept within its deadline as its waits are (plus
        _LAST_LOOK_SECONDS): a broker that does not answer ends in ResultTimeout on time."""
        left = _left(deadline)
        limit = asyncio.timeout(None if left is None else left + _LAST_LOOK_SECONDS)
        try:
            async with limit:
                gathered.learn(await _aread_tasks(gathered.unknown()))
        except TimeoutError:
            if not limit.expired():  # not our deadline: the broker's own error
                raise
            raise self._timeout_error(timeout, None) from None

    def _timed_out(self, timeout: float | None) -> ResultTimeout:
        # A member's own timeout named the member and what was left of the group's
        # timeout ("task ?[g:3] ... within 0.0s"), not the group and the timeout asked for.
        found = _read(self.results)
        return self._timeout_error(timeout, [m.id for m in self.results if not _done(m, found)])

    async def _atimed_out(self, timeout: float | None) -> ResultTimeout:
        """:meth:`_timed_out` for :meth:`aget`: the members' states are awaited, all at
        once, and bounded like :meth:`AsyncResult._last_look`.

        Read with sync broker calls, as get() does, they blocked the event loop (every
        coroutine on it stopped), for as long as the broker took to answer: up to its
        socket timeout, per member.
        """
        try:
            async with asyncio.timeout(_LAST_LOOK_SECONDS):
                found = await _aread_tasks(_tasks(self.results))
        except TimeoutError:
            return self._timeout_error(timeout, None)
        return self._timeout_error(timeout, [m.id for m in self.results if not _done(m, found)])

    def _timeout_error(self, timeout: float | None, waiting: list[str] | None) -> ResultTimeout:
        names = [m.task_name for m in self.results if isinstance(m, AsyncResult)]
        within = _seconds(timeout)
        if waiting is None:  # the broker did not say in time which members are unfinished
            which = (
                f"not all of its {len(self)} members finished within {within} (the broker "
                "did not answer in time which ones)"
            )
        else:
            shown = ", ".join(waiting[:3]) + (", ..." if len(waiting) > 3 else "")
            which = (
                f"{len(waiting)} of {len(self)} members did not finish within {within} ({shown})"
            )
        return ResultTimeout(f"group {self.id}: {which}; {_unfinished(self.app, names)}")

    def forget(self) -> None:
        """Delete the members' stored results and this group's saved membership (and, for
        the handle a chain ending in this group returned, its earlier steps' results)."""
        for task_id in self._workflow:
            self.app.broker.forget_result(task_id)
        for member in self.results:
            if isinstance(member, GroupResult):
                member.forget()
            else:  # no saved header to delete: a group saves only its own membership
                member._forget_results()
        self.app.broker.kv_delete(_group_key(self.id))

    def summary(self) -> ResultRecord:
        """One record for the whole group, the way `celeriac result` shows a task's.

        SUCCESS with the list of values when every member succeeded; FAILURE with the first
        failed member's error once all finished; else PENDING. ``meta`` counts progress.
        """
        return self._summary(_read(self.results))

    def _summary(self, found: _Found) -> ResultRecord:
        records = [_record_of(member, found) for member in self.results]
        done = sum(1 for r in records if r.state in FINAL_STATES)
        meta = {"done": done, "total": len(records)}
        if done < len(records):
            return ResultRecord(state=PENDING, task="group", meta=meta)
        failed = next((r for r in records if r.state != SUCCESS), None)
        if failed is not None:
            return ResultRecord(state=failed.state, task="group", error=failed.error, meta=meta)
        return ResultRecord(
            state=SUCCESS, task="group", result=[r.result for r in records], meta=meta
        )

    def save(self, under: str | None = None, ttl: float | None = None) -> None:
        """Store the membership, so :meth:`restore` finds the group by id (``under``: another
        id, e.g. a chord's, to find it by). Sending a group saves it."""
        ttl = self.app.conf.result_expires if ttl is None else ttl
        tree = msgspec.json.encode(self._tree())
        self.app.broker.kv_set(_group_key(under or self.id), tree, ttl)

    @classmethod
    def restore(cls, app: Celeriac, group_id: str) -> GroupResult | None:
        """The group saved under ``group_id`` (a group's id, or a chord's: then its header).

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> GroupResult("g1", [AsyncResult("g1:0", app)], app).save()
            >>> GroupResult.restore(app, "g1")
            <GroupResult g1 (1 members)>
        """
        (raw,) = app.broker.kv_get([_group_key(group_id)])
        if raw is None:
            return None
        return _from_tree(app, msgspec.json.decode(raw))

    def _tree(self) -> dict[str, Any]:
        # Members named <group id>:<index> (the default) are stored as a count alone, so a
        # group of 20,000 saves a few bytes.
        ids = [m.id if isinstance(m, AsyncResult) else None for m in self.results]
        if ids == [f"{self.id}:{i}" for i in range(len(ids))]:
            return {"g": self.id, "n": len(ids)}
        return {
            "g": self.id,
            "r": [m.id if isinstance(m, AsyncResult) else m._tree() for m in self.results],
        }


def _from_tree(app: Celeriac, tree: dict[str, Any]) -> GroupResult:
    group_id = tree["g"]
    if "n" in tree:
        return GroupResult(
            group_id, [AsyncResult(f"{group_id}:{i}", app) for i in range(tree["n"])], app
        )
    members: list[AsyncResult[Any] | GroupResult] = [
        AsyncResult(m, app) if isinstance(m, str) else _from_tree(app, m) for m in tree["r"]
    ]
    return GroupResult(group_id, members, app)


def _group_key(group_id: str) -> str:
    return f"celeriac:group:{group_id}"


def _record_of(member: AsyncResult[Any] | GroupResult, found: _Found) -> ResultRecord:
    if isinstance(member, GroupResult):
        return member._summary(found)
    stored = found[member.id]
    return decode_result(stored[0]) if stored else ResultRecord(state=PENDING)


def _unfinished(app: Celeriac, task_names: Sequence[str]) -> str:
    """What a missing final result can mean, for a timeout's message.

    Nothing stored looks the same whether the task is still queued, or finished long ago
    and its result expired or was forgotten, or it never stores one (``ignore_result``):
    "it may still run" alone sent people to check workers that had done the work.
    """
    it, its = ("they", "their") if len(task_names) > 1 else ("it", "its")
    text = (
        f"{it} may still be queued or running (check `celeriac status` for live workers "
        f"on {its} queue), or {it} finished and {its} result is gone: results are kept "
        f"result_expires={app.conf.result_expires:g}s, and forget() deletes them."
    )
    quiet = sorted({n for n in task_names if _ignores_result(app, n)})
    if quiet:
        text += (
            f" Note: {', '.join(quiet)} ignores its result (ignore_result=True), so its "
            "success stores nothing to wait for (except as a workflow step)."
        )
    return text


def _ignores_result(app: Celeriac, task_name: str) -> bool:
    task = app.tasks.get(task_name)
    return task is not None and task.ignores_result


def _seconds(timeout: float | None) -> str:
    # "0.3s", not "0.2999894599997788s" (what a group's member had left of its timeout).
    return "forever" if timeout is None else f"{timeout:g}s"


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _finished(members: Sequence[AsyncResult[Any] | GroupResult]) -> list[bool]:
    """Which members reached a final state, read in one broker round trip."""
    found = _read(members)
    return [_done(m, found) for m in members]


# -- reading many results at once ----------------------------------------------------------

#: The stored result (bytes, final) of each task id read, or None where nothing is stored.
_Found = dict[str, tuple[bytes, bool] | None]


def _tasks(members: Sequence[AsyncResult[Any] | GroupResult]) -> list[AsyncResult[Any]]:
    """The tasks of ``members`` in member order, each nested group's members in its place."""
    tasks: list[AsyncResult[Any]] = []
    for member in members:
        if isinstance(member, GroupResult):
            tasks.extend(_tasks(member.results))
        else:
            tasks.append(member)
    return tasks


def _ids_by_app(tasks: Sequence[AsyncResult[Any]]) -> list[tuple[Celeriac, list[str]]]:
    """The distinct ids of ``tasks``, per app: members of one group share one, so one read."""
    apps: dict[int, tuple[Celeriac, dict[str, None]]] = {}
    for task in tasks:
        apps.setdefault(id(task.app), (task.app, {}))[1][task.id] = None
    return [(app, list(ids)) for app, ids in apps.values()]


def _read_tasks(tasks: Sequence[AsyncResult[Any]]) -> _Found:
    """The stored result of each task, in one broker call (:meth:`Broker.get_results`)."""
    found: _Found = {}
    for app, ids in _ids_by_app(tasks):
        found.update(zip(ids, app.broker.get_results(ids), strict=True))
    return found


async def _aread_tasks(tasks: Sequence[AsyncResult[Any]]) -> _Found:
    """Async face of :func:`_read_tasks`."""
    asked = _ids_by_app(tasks)
    replies = await asyncio.gather(*(app.broker.aget_results(ids) for app, ids in asked))
    found: _Found = {}
    for (_, ids), stored in zip(asked, replies, strict=True):
        found.update(zip(ids, stored, strict=True))
    return found


def _read(members: Sequence[AsyncResult[Any] | GroupResult]) -> _Found:
    """The stored results of every task of ``members``, nested groups' included."""
    return _read_tasks(_tasks(members))


def _done(member: AsyncResult[Any] | GroupResult, found: _Found) -> bool:
    """``member.ready()``, from results already read."""
    if isinstance(member, GroupResult):
        return all(_done(m, found) for m in member.results)
    stored = found[member.id]
    return stored is not None and stored[1]


def _states(members: Sequence[AsyncResult[Any] | GroupResult], found: _Found) -> Iterator[str]:
    """The state of every task of ``members`` (nested groups' too), from results read."""
    for task in _tasks(members):
        stored = found[task.id]
        yield decode_result(stored[0]).state if stored else PENDING


class _Gathering:
    """What :meth:`GroupResult.get` knows so far (and ``aget``, which differs only in how
    it reads and waits): the group's tasks in member order (a nested group's in its place),
    the final results found, and the outcome of each task before the first one not known
    to have finished."""

    def __init__(self, members: Sequence[AsyncResult[Any] | GroupResult], propagate: bool):
        self.members = members
        self.tasks = _tasks(members)
        self.propagate = propagate
        self.final: dict[str, bytes] = {}
        self.outcomes: list[Any] = []
        self._asked_at = 0.0
        self._read_at = 0.0  # when a read of the rest is due again

    def unknown(self) -> list[AsyncResult[Any]]:
        """The tasks to read: those not known finished, from the first of them on."""
        self._asked_at = time.monotonic()
        return [t for t in self.tasks[len(self.outcomes) :] if t.id not in self.final]

    def learn(self, found: _Found) -> None:
        """Take in a read of :meth:`unknown`. The next read is due once _SWEEP_SHARE times
        as long as this one took has passed, so a large group's reads stay a small share of
        the wait even when its members finish one by one, in order."""
        now = time.monotonic()
        self._read_at = now + _SWEEP_SHARE * (now - self._asked_at)
        self.final.update((i, s[0]) for i, s in found.items() if s is not None and s[1])

    def found(self, task: AsyncResult[Any], raw: bytes) -> None:
        """Take in the final result a wait for ``task`` returned."""
        self.final[task.id] = raw

    def read_due(self) -> bool:
        """Whether to read the rest again now (see :meth:`learn`)."""
        return time.monotonic() >= self._read_at

    def first_unknown(self) -> AsyncResult[Any] | None:
        """The first task not known to have finished (None: all have), taking the outcome
        of each finished one before it. With ``propagate``, a failed one's error is raised
        here: once every task before it finished, not after the whole group did."""
        while len(self.outcomes) < len(self.tasks):
            task = self.tasks[len(self.outcomes)]
            raw = self.final.get(task.id)
            if raw is None:
                return task
            self.outcomes.append(task._outcome(raw, None, self.propagate))
        return None

    def values(self) -> list[Any]:
        """The outcomes, nested as the members are."""
        return _nested(self.members, iter(self.outcomes))


def _nested(
    members: Sequence[AsyncResult[Any] | GroupResult], outcomes: Iterator[Any]
) -> list[Any]:
    return [
        _nested(m.results, outcomes) if isinstance(m, GroupResult) else next(outcomes)
        for m in members
    ]


def _wait_for(member: AsyncResult[Any] | GroupResult, seconds: float) -> bool:
    """Block until ``member`` finished (True), woken by its commit, or ``seconds`` passed."""
    if isinstance(member, AsyncResult):
        return member.app.broker.wait_result(member.id, seconds) is not None
    try:
        member.get(timeout=seconds, propagate=False, disable_sync_subtasks=False)
    except ResultTimeout:
        return False
    return True


def _refuse_inside_a_task(awaited: AsyncResult[Any] | GroupResult, call: str) -> None:
    """Raise :class:`GetInsideTask` when a worker (or ``run_queued``, or eager mode) is
    running a task in this context.

    In-process runs are refused too: ``run_queued`` runs one task at a time, so the wait
    would never end, and eager mode must fail where production would rather than pass.
    """
    request = _current.get()
    if request is None:
        return
    if isinstance(awaited, GroupResult):
        what = f"group {awaited.id} ({len(awaited)} members)"
    else:
        what = f"{awaited.task_name or '?'}[{awaited.id}]"
    raise GetInsideTask(
        f"task {request.task}[{request.id}] called {call} on {what} while it runs: refused, "
        "as the wait holds this worker's slot while the awaited task needs one (with -c 1, "
        "or every slot waiting like this, it hangs until the soft time limit). Chain the "
        "steps instead (first.s() | then.s()), or use a chord for many. If the awaited task "
        f"runs on a queue that other workers serve, pass {call[:-1]}disable_sync_subtasks=False)."
    )


def _rebuild(record: ResultRecord, task_id: str) -> BaseException:
    """The task's exception as its own type when that type is loaded here, else TaskFailed."""
    label = f"{record.task or '?'}[{task_id}]"
    error = record.error
    if record.state == EXPIRED:
        # The worker's reason says how late, and whether earlier runs (retries) failed.
        why = error.message if error and error.message else "expired before a worker started it"
        return TaskExpired(f"task {label} {why}")
    if record.state == REVOKED:
        return TaskRevoked(f"task {label} was revoked")
    if error is None:
        return TaskFailed(f"task {label} ended {record.state} without an error")
    exc: BaseException
    cls = _loaded_exception_type(error.type)
    try:
        exc = (
            cls(_key_error_arg(error.message) if issubclass(cls, KeyError) else error.message)
            if cls is not None
            else TaskFailed(f"{error.type}: {error.message}", error.type, error.traceback)
        )
    except Exception:  # noqa: BLE001 - a type whose __init__ wants other arguments
        exc = TaskFailed(f"{error.type}: {error.message}", error.type, error.traceback)
    if error.traceback:
        exc.add_note(f"Remote traceback of task {label}:\n{error.traceback}")
    return exc


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
