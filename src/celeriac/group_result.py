"""GroupResult: the results of a group's members, read together.

Every read of many members is one broker round trip (:meth:`Broker.get_results`), nested
groups flattened: a group of 10,000 cost 10,000 round trips per read when each member was
read alone. Waits block on one member at a time, woken by its commit, and read the rest
again only as often as keeps those reads a small share of the wait.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.errors import ResultTimeout
from celeriac.message import ResultRecord, decode_result
from celeriac.result import (
    FAILURE,
    FINAL_STATES,
    LAST_LOOK_SECONDS,
    PENDING,
    SUCCESS,
    AsyncResult,
    check_timeout,
    group_key,
    refuse_inside_a_task,
    seconds_text,
    time_left,
    unfinished_note,
    warn_on_the_loop,
)

if TYPE_CHECKING:
    from celeriac.app import Celeriac

# iter_completed blocks on its oldest unfinished member (woken by its commit) for at least
# this long before it reads the others once, for members finishing out of order; and for
# _SWEEP_SHARE times as long as that read took, so a large group's reads stay a small
# share of the waiter's time, on a slow link too (a read of all members is one round trip:
# ~16 ms for 10,000 on a local Redis; it was one per member, ~0.5 s). get() reads the rest
# after a commit woke its wait, as often as the same share allows.
_SWEEP_SECONDS = 1.0
_SWEEP_SHARE = 20


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
        check_timeout(timeout, "iter_completed()")
        if disable_sync_subtasks:
            refuse_inside_a_task(self, "iter_completed()")
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
            left = time_left(deadline)
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
        """How many members succeeded, as Celery's (a failed or revoked member is finished,
        see :meth:`ready`, but not counted: ported code that reports "N succeeded" read 12
        with 10 of 12 revoked); a nested group counts once, when all of it succeeded. One
        broker round trip for the whole group, as every read of many members here
        (:meth:`ready`, :meth:`state`, :meth:`get`...).

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.control import revoke
            >>> app = Celeriac("doc", broker="memory://")
            >>> g = GroupResult("g1", [AsyncResult("g1:0", app), AsyncResult("g1:1", app)], app)
            >>> revoke(app, "g1:1")
            False
            >>> g.completed_count(), g.results[1].ready()
            (0, True)
        """
        found = _read(self.results)
        return sum(1 for member in self.results if _succeeded(member, found))

    def unfinished(self) -> list[str]:
        """The ids of the group's tasks (nested groups' too) not finished yet, in member
        order: what a stuck group or chord waits on. One broker round trip.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.control import revoke
            >>> app = Celeriac("doc", broker="memory://")
            >>> g = GroupResult("g1", [AsyncResult("g1:0", app), AsyncResult("g1:1", app)], app)
            >>> revoke(app, "g1:0")
            False
            >>> g.unfinished()
            ['g1:1']
        """
        found = _read(self.results)
        return [task.id for task in _tasks(self.results) if not _done(task, found)]

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
        *,
        interval: float | None = None,
    ) -> list[Any]:
        """Wait for every member; return their values in member order.

        Refused inside a running task, as :meth:`AsyncResult.get` is.

        Raises:
            ResultTimeout: not all finished within ``timeout`` seconds.
            GetInsideTask: called inside a running task (a ``RuntimeError``).
            Exception: the first failed member's exception (with ``propagate``), as soon
                as every member before it finished.
        """
        check_timeout(timeout, "get()", interval)
        if disable_sync_subtasks:
            refuse_inside_a_task(self, "get()")
        deadline = None if timeout is None else time.monotonic() + timeout
        gathered = _Gathering(self.results, propagate)
        gathered.learn(_read_tasks(gathered.unknown()))
        if gathered.first_unknown() is not None:  # about to block
            warn_on_the_loop("get()")
        # A wait for each member in turn, but not a read of each: the first read above
        # found those already finished, and each commit that wakes the wait is followed by
        # a read of the rest while that costs a small share of the time (on Redis, every
        # member's wait cost 5 round trips: 2,000 finished members took 1.3 s, not 10 ms).
        while (task := gathered.first_unknown()) is not None:
            raw = task._wait(time_left(deadline))
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
        *,
        interval: float | None = None,
    ) -> list[Any]:
        """Async face of :meth:`get`."""
        check_timeout(timeout, "aget()", interval)
        if disable_sync_subtasks:
            refuse_inside_a_task(self, "aget()")
        deadline = None if timeout is None else time.monotonic() + timeout
        gathered = _Gathering(self.results, propagate)
        await self._aread_rest(gathered, deadline, timeout)
        while (task := gathered.first_unknown()) is not None:
            raw = await task._await(time_left(deadline))
            if raw is None:
                raise await self._atimed_out(timeout)
            gathered.found(task, raw)
            if gathered.read_due():
                await self._aread_rest(gathered, deadline, timeout)
        return gathered.values()

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        *,
        interval: float | None = None,
    ) -> list[Any]:
        """Celery's name for :meth:`get`, with its arguments.

        Example:
            >>> from celeriac import Celeriac, group
            >>> from celeriac.testing import run_queued
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task
            ... def double(x: int) -> int:
            ...     return 2 * x
            >>> result = group(double.s(i) for i in range(3)).apply_async()
            >>> run_queued(app)
            3
            >>> result.join(timeout=1)
            [0, 2, 4]
        """
        return self.get(timeout, propagate, disable_sync_subtasks, interval=interval)

    async def _aread_rest(
        self, gathered: _Gathering, deadline: float | None, timeout: float | None
    ) -> None:
        """One read for :meth:`aget`, kept within its deadline as its waits are (plus
        LAST_LOOK_SECONDS): a broker that does not answer ends in ResultTimeout on time."""
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        left = time_left(deadline)
        limit = asyncio.timeout(None if left is None else left + LAST_LOOK_SECONDS)
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
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        try:
            async with asyncio.timeout(LAST_LOOK_SECONDS):
                found = await _aread_tasks(_tasks(self.results))
        except TimeoutError:
            return self._timeout_error(timeout, None)
        return self._timeout_error(timeout, [m.id for m in self.results if not _done(m, found)])

    def _timeout_error(self, timeout: float | None, waiting: list[str] | None) -> ResultTimeout:
        names = [m.task_name for m in self.results if isinstance(m, AsyncResult)]
        within = seconds_text(timeout)
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
        return ResultTimeout(f"group {self.id}: {which}; {unfinished_note(self.app, names)}")

    def forget(self) -> None:
        """Delete the members' stored results and this group's saved membership (and, for
        the handle a chain ending in this group returned, its earlier steps' results).

        Every result is deleted in one round trip (:meth:`Broker.forget_results`), nested
        groups and workflows included: one per member made a group of 10,000 cost 10,000.
        Then one deletion per saved membership (this group's and each nested group's).

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> g = GroupResult("g1", [AsyncResult("g1:0", app)], app)
            >>> app.broker.store_result("g1:0", b"{}", 60)
            >>> g.save()
            >>> g.forget()
            >>> app.broker.get_result("g1:0"), GroupResult.restore(app, "g1")
            (None, None)
        """
        task_ids: list[str] = []
        group_ids: list[str] = []
        self._forgotten(task_ids, group_ids)
        self.app.broker.forget_results(task_ids)
        for group_id in group_ids:
            self.app.broker.kv_delete(group_key(group_id))

    def _forgotten(self, task_ids: list[str], group_ids: list[str]) -> None:
        """Collect what :meth:`forget` deletes: every task id, and every group's id (a
        plain member has no saved membership: a group saves only its own)."""
        task_ids.extend(self._workflow)
        for member in self.results:
            if isinstance(member, GroupResult):
                member._forgotten(task_ids, group_ids)
            else:
                task_ids.extend((*member._workflow, member.id))
        group_ids.append(self.id)

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
        self.app.broker.kv_set(group_key(under or self.id), tree, ttl)

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
        (raw,) = app.broker.kv_get([group_key(group_id)])
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


def _record_of(member: AsyncResult[Any] | GroupResult, found: _Found) -> ResultRecord:
    if isinstance(member, GroupResult):
        return member._summary(found)
    stored = found[member.id]
    return decode_result(stored[0]) if stored else ResultRecord(state=PENDING)


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
    import asyncio  # loaded by code that awaits, not at import: see architecture.md

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


def _succeeded(member: AsyncResult[Any] | GroupResult, found: _Found) -> bool:
    """Whether ``member`` (every task of it, for a group) succeeded, from results read."""
    return all(state == SUCCESS for state in _states([member], found))


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
