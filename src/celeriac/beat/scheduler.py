"""The scheduler loop: any number may run at once, and every tick fires exactly once.

How one tick is sent (entry ``E``, fire time ``T``):

1. Every scheduler computes the same ``T`` from the schedule (a pure function of time) and
   wakes at ``T``.
2. Each tries to **claim** the tick: ``kv_set("beat:tick:E:T", "claimed <id>",
   only_if_absent=True)`` with a short TTL (half the interval, at most 30 s). One wins.
3. The winner sends the task with the **deterministic id** ``beat:E:<T>`` (expiring when the
   next tick is due), then turns the claim into a lasting ``sent <task id>`` mark and
   records the entry's state (last tick, task id, next run).
4. The losers look at the claim: ``sent`` — done; ``claimed`` and not confirmed — they look
   again just after its TTL lapses (counted from their own failed claim, which came after
   the winner's) and, if the winner died between claim and send, take the tick over.
   Sending the same deterministic id twice is a no-op in every broker, so even a takeover
   of a tick that *was* sent creates no second task while it is queued, running or has a
   stored result. After that, the worker's tick fence (:mod:`celeriac.middleware.ticks`)
   skips the second copy.
5. A winner whose claim took longer than the claim's TTL (this process was paused, the
   broker did not answer) checks before sending that the claim is still its own: another
   scheduler may have taken the tick over meanwhile. A tick whose successor is already due
   is not sent at all (only the latest tick ever is), and a send that stalled does not
   write an older last tick over the newer one another scheduler recorded meanwhile.

Missed ticks (every scheduler was down at ``T``): only the latest fire time is ever
considered, so recovery never bursts. A tick more than its grace late (half the interval,
at most ``beat_missed_after``) is dropped under ``missed="skip"`` and sent once under
``"run_once"``; ticks before an entry existed (or was changed or resumed) are never due.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.beat.entries import EntryState, Loaded, grace, tick_id
from celeriac.beat.notices import Notices, at
from celeriac.beat.schedules import format_seconds
from celeriac.brokers import shown
from celeriac.errors import BrokerError, CeleriacError

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.beat.entries import Entry
    from celeriac.beat.schedules import Schedule

log = logging.getLogger("celeriac.beat")

_SENT_MARK_MARGIN = 300.0  # seconds a "sent" mark outlives its tick: covers clock skew
_MAX_CLAIM = 30.0  # seconds; a claimer that died is taken over within this at most
_LAPSE_MARGIN = 0.05  # seconds past a claim's TTL to look again: the broker expires it by then


class Scheduler(Notices):
    """Sends the ticks of ``app.beat``'s entries. Run as many as you like.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> _ = app.beat.add("ping", "doc.ping", every=60)
        >>> due = app.beat.get("ping").next_run
        >>> _ = Scheduler(app, clock=lambda: due).step()  # sends ping's tick for `due`
        >>> _ = Scheduler(app, clock=lambda: due).step()  # a second scheduler: no-op
        >>> app.broker.stats()[0].ready
        1

    Args:
        app: the application (its broker holds entries, state and claims).
        clock: the time source (tests pass a fake one).
        ident: this scheduler's id in logs and state (default ``host:pid``).
        parent_pid: stop when this process is gone (a ``worker --beat`` scheduler).
    """

    def __init__(
        self,
        app: Celeriac,
        *,
        clock: Callable[[], float] = time.time,
        ident: str | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.app = app
        self.clock = clock
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}"
        # Claims carry a token of this instance: "is this claim still mine?" must not be
        # answered yes for another process that happens to have the same ident.
        self._claim_owner = f"{self.ident} {secrets.token_hex(4)}"
        self.parent_pid = parent_pid
        self._stopping = threading.Event()
        self._done: dict[str, float] = {}  # entry -> latest tick settled by this scheduler
        # entry -> (tick claimed by another and unconfirmed, when its claim lapses at the latest)
        self._contended: dict[str, tuple[float, float]] = {}
        self._known: dict[str, tuple[Entry | None, bool]] | None = None
        self._unreadable: dict[str, str] = {}  # entry -> why this scheduler cannot schedule it
        self._unregistered: set[tuple[str, str]] = set()  # (entry, task) said to be unknown
        self._skewed: set[str] = set()  # entries whose last send is ahead of this clock (said)
        self._sent_here: set[str] = set()  # entries this scheduler sent a tick of
        self._rivals: set[tuple[str, str, str]] = set()  # other code's definitions (said)
        self._broker_down = False
        self._down_since = 0.0  # when this scheduler first found the broker unreachable
        self._outage = 0.0  # seconds the broker was unreachable, when this pass ended an outage
        self._due_at: float | None = None  # when the current pass should have started
        self._late = 0.0  # how late this pass read the entries: a stalled broker or process
        self._stalled = 0.0  # longest claim or send stall of the last pass (a locked SQLite)

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Schedule until SIGTERM/SIGINT (or :meth:`stop`); return the exit code.

        Shutdown is warm: a pass in progress finishes (a claimed tick is sent), then the
        loop ends. Other schedulers carry on without a gap.

        Example:
            >>> from celeriac import Celeriac
            >>> s = Scheduler(Celeriac("doc", broker="memory://"))
            >>> s.stop(); s.run()
            0
        """
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        log.info(
            "beat: scheduler %s starting (broker %s); other schedulers may run too: "
            "each tick is sent once",
            self.ident,
            shown(self.app.conf.broker_url),
        )
        try:
            while not self._stopping.is_set():
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("beat: the worker that started scheduler %s is gone", self.ident)
                    break
                self._stopping.wait(self.step())
        finally:
            for signum, handler in previous.items():  # an embedding program keeps its own
                signal.signal(signum, handler)
        log.info("beat: scheduler %s stopped", self.ident)
        return 0

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current pass (safe from signal handlers).

        Example:
            >>> from celeriac import Celeriac
            >>> Scheduler(Celeriac("doc", broker="memory://")).stop()
        """
        self._stopping.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping.is_set():
            log.info("beat: %s received, stopping", signal.Signals(signum).name)
        self.stop()

    # -- one pass --------------------------------------------------------------------------

    def step(self) -> float:
        """Send every tick that is due now; return the seconds until the next pass.

        The next pass is at the next fire time of any entry, and at most
        ``beat_max_interval`` away, so run-time changes are picked up within it.

        Example:
            >>> from celeriac import Celeriac
            >>> 0 < Scheduler(Celeriac("doc", broker="memory://"), clock=lambda: 0.5).step() <= 1
            True
        """
        wait = self._pass()
        self._due_at = self.clock() + wait
        return wait

    def _pass(self) -> float:
        interval = self.app.conf.beat_max_interval
        try:
            loaded = self.app.beat.load()
        except BrokerError as exc:
            return self._broker_failed(exc, interval)
        except CeleriacError as exc:
            log.error("beat: cannot load the entries: %s", exc)
            return interval
        # The time is read after the broker answered, and again for each entry: a read that
        # stalled (a slow broker, a paused VM) must not make a stale tick look on time.
        now = self.clock()
        # A pass that got here late (the broker did not answer, this process was paused),
        # after a stalled claim (a locked SQLite file) or after an outage says so when it
        # finds ticks that were not sent.
        late = max(now - self._due_at, 0.0) if self._due_at is not None else 0.0
        self._late, self._stalled = max(late, self._stalled), 0.0
        self._outage = max(now - self._down_since, 0.0) if self._broker_down else 0.0
        wake = now + interval
        self._note_changes(loaded, now)
        self._note_unreadable(loaded)
        self._note_unregistered(loaded)
        for item in loaded.values():
            if item.entry is None or item.paused:
                continue
            now = self.clock()
            try:
                wake = min(wake, self._consider(item, item.entry, now))
            except BrokerError as exc:
                return self._broker_failed(exc, wake - now)
            except Exception:  # one broken entry must not stop the others
                log.exception("beat: entry %s failed; the other entries carry on", item.name)
        # Said once a whole pass went through, not once the entries could be read: a broker
        # that answers reads and refuses writes (Redis full) had this said, and the outage
        # and the ticks lost said again, at every pass, a second apart for as long as it
        # lasted, each outage "1s" long.
        if self._broker_down:
            log.info("beat: the broker is reachable again")  # the ticks lost say for how long
            self._broker_down = False
        return max(wake - self.clock(), 0.001)

    def _consider(self, item: Loaded, entry: Entry, now: float) -> float:
        """Send ``entry``'s current tick if it is due and unsent; return when to look next."""
        name, schedule = item.name, entry.schedule
        upcoming = schedule.next_after(now)
        state = item.state if item.state is not None else self._first_seen(name, entry, now)
        self._check_clock(name, schedule, state, now)
        self._check_rival(name, entry, state)
        tick = schedule.latest(now)
        if tick <= self._done.get(name, -math.inf):
            return upcoming
        baseline = max(state.since, item.changed_at)
        if tick < baseline or (state.last_tick is not None and state.last_tick >= tick):
            self._done[name] = tick  # never due (before the entry existed) or already sent
            return upcoming
        following = schedule.next_after(tick)
        late = now - tick
        on_time = grace(following - tick, self.app.conf.beat_missed_after)
        unsent = self._unsent_before(name, schedule, state, tick, baseline)
        if late > on_time and (
            self._contended.get(name, (None,))[0] != tick  # a claimed tick is not missed
        ):
            span = _span(name, schedule, tick if unsent is None else unsent[0], tick, now)
            level, why = self._why_unsent(on_time)
            if entry.missed == "skip" or state.schedule != schedule.describe():
                log.log(
                    level,
                    "beat: missed %s (%s); policy skip: next at %s",
                    span,
                    why,
                    at(schedule, upcoming, now),
                )
                self._done[name] = tick
                return upcoming
            notice: tuple[Any, ...] | None = (
                logging.INFO,
                "beat: missed %s (%s); policy run_once: sending the latest (%s) once",
                span,
                why,
                at(schedule, tick, now),
            )
        elif unsent is not None:
            level, why = self._why_unsent(on_time)
            notice = (
                level,
                "beat: %s not sent (%s); only the latest tick is sent (%s)",
                _span(name, schedule, unsent[0], unsent[1], now, verb=True),
                why,
                at(schedule, tick, now),
            )
        else:
            notice = None
        wake = self._claim_and_send(item, entry, state, tick=tick, following=following, now=now)
        # Said once the broker took the send: one that refused it (a BrokerError, said as
        # an outage) would have the same ticks said lost again at every pass.
        if notice is not None:
            log.log(*notice)
        return wake

    def _unsent_before(
        self, name: str, schedule: Schedule, state: EntryState, tick: float, baseline: float
    ) -> tuple[float, float] | None:
        """The first and last fire times before ``tick`` that no scheduler sent, if any.

        Only for a log line that tells a person ticks were lost (to a broker that did not
        answer, or to no scheduler running); the previous tick's mark is read to be sure.
        """
        sent = -math.inf if state.last_tick is None else state.last_tick
        settled = max(sent, self._done.get(name, -math.inf))
        if not math.isfinite(settled):
            return None  # never sent: nothing to compare with
        if state.schedule != schedule.describe():
            # The last tick was sent under another schedule (a deploy changed it in code):
            # the new schedule's fire times before now were never due, not lost. Reported,
            # an hourly entry made minutely at :40 "lost" the ticks from :01 to :39.
            return None
        first = schedule.next_after(max(settled, baseline))
        if first >= tick:
            return None
        last = schedule.latest(tick - 0.001)
        mark = self.app.beat.store.claim_value(name, last)
        if mark is not None and mark.startswith(b"sent "):
            return None  # sent by a scheduler whose state write has not landed yet
        return first, last

    def _why_unsent(self, on_time: float) -> tuple[int, str]:
        """The log level and the cause of ticks not sent on time, as far as this scheduler
        knows it: a WARNING when it was itself kept from sending them."""
        if self._outage > 0:
            return logging.WARNING, (
                f"this scheduler could not reach the broker for "
                f"{format_seconds(round(self._outage, 1))} and no other scheduler sent them"
            )
        if self._late > on_time:
            return logging.WARNING, (
                f"this scheduler was {format_seconds(round(self._late, 1))} late: the broker "
                "did not answer for that long, this process was paused, or this host's clock "
                "jumped ahead"
            )
        return logging.INFO, (
            f"not sent within {format_seconds(on_time)} of the fire time: no scheduler was "
            "running, or the broker did not answer"
        )

    def _claim_and_send(
        self,
        item: Loaded,
        entry: Entry,
        state: EntryState,
        *,
        tick: float,
        following: float,
        now: float,
    ) -> float:
        name, store = item.name, self.app.beat.store
        claim_ttl = min(max((following - tick) / 2, 0.1), _MAX_CLAIM)
        upcoming = entry.schedule.next_after(now)
        if not store.claim(name, tick, self._claim_owner, claim_ttl):
            # The claim we lost was made before our attempt was answered, so it lapses at
            # most claim_ttl after this answer. Counted from `now` (read before the attempt)
            # the next look could come too early, find the claim still held and wait for
            # the next tick: the tick of a claimer that died was lost.
            lapse = self.clock() + claim_ttl + _LAPSE_MARGIN
            return self._claimed_elsewhere(name, tick, min(lapse, upcoming), upcoming)
        after_stall = self._after_stalled_claim(
            name, entry.schedule, tick, following, claimed_from=now, claim_ttl=claim_ttl
        )
        if after_stall is not None:
            return after_stall
        try:
            task_id = self._send(entry, tick, following)
        except BrokerError:
            self._contended[name] = (tick, now)  # our claim lapses; whoever looks next retries
            raise
        except (CeleriacError, TypeError, ValueError) as exc:
            # The tick itself is bad (too large, an option no message can carry, say one
            # stored by a process that did not check it): retrying it cannot help.
            log.error(
                "beat: could not send the tick of %s for %s: %s. Fix the entry (celeriac "
                "beat add %s ... --replace, or its definition in code); next tick at %s",
                name,
                at(entry.schedule, tick, now),
                exc,
                name,
                at(entry.schedule, upcoming, now),
            )
            self._done[name] = tick
            store.write_state(name, _replace_state(state, last_error=str(exc)))
            return upcoming
        sent_at = self.clock()
        store.mark_sent(name, tick, task_id, following - sent_at + _SENT_MARK_MARGIN)
        stalled = sent_at - now >= claim_ttl
        sent = _replace_state(
            state,
            task=entry.task,
            schedule=entry.schedule.describe(),
            last_tick=tick,
            last_task_id=task_id,
            last_sent_at=sent_at,
            next_run=following,
            sent_by=self.ident,
            last_error=None,
        )
        if not stalled or not self._newer_tick_recorded(name, tick):
            store.write_state(name, sent)
        self._done[name] = tick
        self._sent_here.add(name)
        self._contended.pop(name, None)
        if stalled:
            self._note_stall(sent_at - now)
            log.warning(
                "beat: sent tick of %s for %s as task %s, %s after claiming it (this process "
                "was paused, or the broker did not answer): another scheduler may have taken "
                "it over and sent it too; the worker runs one copy",
                name,
                at(entry.schedule, tick, sent_at),
                task_id,
                format_seconds(round(sent_at - now, 1)),
            )
        else:
            log.info(
                "beat: sent tick of %s for %s as task %s",
                name,
                at(entry.schedule, tick, now),
                task_id,
            )
        return entry.schedule.next_after(sent_at)

    def _after_stalled_claim(
        self,
        name: str,
        schedule: Schedule,
        tick: float,
        following: float,
        *,
        claimed_from: float,
        claim_ttl: float,
    ) -> float | None:
        """None when a claim just won may be acted on; else when to look at the entry next.

        A claim that took ``claim_ttl`` or longer to win (this process was paused, the
        broker did not answer) may have lapsed and been taken over while this scheduler
        waited: sending then would send the tick a second time, as if on time. So the claim
        is read again. And a tick whose successor is due already is not sent at all: only
        the latest tick ever is (the next pass considers it; by default the message of this
        one would expire unread anyway).
        """
        now = self.clock()
        if now - claimed_from < claim_ttl:
            return None
        stall = (
            f"this scheduler took {format_seconds(round(now - claimed_from, 1))} to claim it "
            "(this process was paused, or the broker did not answer)"
        )
        if now >= following:
            log.warning(
                "beat: the tick of %s for %s is not sent: %s, and the next tick is due already",
                name,
                at(schedule, tick, now),
                stall,
            )
            self._done[name] = tick
            self._note_stall(now - claimed_from)
            return now
        if self.app.beat.store.reclaim(name, tick, self._claim_owner, claim_ttl):
            return None  # still ours (the broker itself stalled), or lapsed and ours again
        log.warning(
            "beat: the tick of %s for %s is left to the scheduler that took it over: %s",
            name,
            at(schedule, tick, now),
            stall,
        )
        upcoming = schedule.next_after(now)
        return self._claimed_elsewhere(
            name, tick, min(now + claim_ttl + _LAPSE_MARGIN, upcoming), upcoming
        )

    def _note_stall(self, seconds: float) -> None:
        """A claim or send took ``seconds`` (a locked SQLite file, a paused process): the
        ticks it cost, of this entry and the others, are reported with it as their cause, in
        this pass and the next."""
        self._late = max(self._late, seconds)
        self._stalled = max(self._stalled, seconds)

    def _newer_tick_recorded(self, name: str, tick: float) -> bool:
        """Whether the entry's state names a tick after ``tick`` (sent while this one stalled)."""
        _, states = self.app.beat.store.read([name])
        current = states.get(name)
        return current is not None and current.last_tick is not None and current.last_tick > tick

    def _claimed_elsewhere(self, name: str, tick: float, lapse: float, upcoming: float) -> float:
        """Another scheduler holds the claim: done if it sent the tick, else look again."""
        mark = self.app.beat.store.claim_value(name, tick)
        if mark is not None and mark.startswith(b"sent "):
            self._done[name] = tick
            self._contended.pop(name, None)
            log.debug("beat: tick of %s for %s was sent by another scheduler", name, tick)
            return upcoming
        # Claimed and not confirmed (or the claim just lapsed): look again when it lapses,
        # and take the tick over if its claimer died before sending it. A pass before then
        # (another entry's tick) finds the same claim: it keeps the first estimate, or the
        # next one would land on the following tick and this one would be lost.
        tick_before, lapse_before = self._contended.get(name, (None, 0.0))
        if tick_before == tick and self.clock() < lapse_before < lapse:
            lapse = lapse_before
        self._contended[name] = (tick, lapse)
        return lapse

    def _send(self, entry: Entry, tick: float, following: float) -> str:
        task_id = tick_id(entry.name, tick)
        result = self.app.send_task(
            entry.task,
            entry.args,
            dict(entry.kwargs),
            task_id=task_id,
            **entry.send_options(tick, following),
        )
        return result.id  # a dedupe middleware may name an existing task instead

    # -- bookkeeping -----------------------------------------------------------------------

    def _first_seen(self, name: str, entry: Entry, now: float) -> EntryState:
        """Record when an entry was first seen: ticks before it were never due.

        Written whenever the state is missing (not only once per process), so an entry
        whose state was deleted or expired starts again from its next tick. The name goes
        back in the index then too: a broker that lost its data (a Redis restarted without
        persistence) lost the index with it, and `celeriac beat list` would show nothing.
        """
        state = EntryState(since=now, task=entry.task, schedule=entry.schedule.describe())
        self.app.beat.store.register(name)
        self.app.beat.store.write_state(name, state, only_if_absent=True)
        return state

    def _broker_failed(self, exc: BrokerError, wait: float) -> float:
        if not self._broker_down:
            log.warning("beat: broker unreachable (%s); retrying every %.1fs", exc, wait)
            self._broker_down = True
            self._down_since = self.clock()
        return wait


def _span(
    name: str, schedule: Schedule, first: float, last: float, now: float, *, verb: bool = False
) -> str:
    """``the tick of E for 03:00:00`` or ``the ticks of E from 02:00:00 to 03:00:00``, with
    ``was``/``were`` after it when ``verb``."""
    if first >= last:
        return f"the tick of {name} for {at(schedule, last, now)}{' was' if verb else ''}"
    return (
        f"the ticks of {name} from {at(schedule, first, now)} to {at(schedule, last, now)}"
        f"{' were' if verb else ''}"
    )


def _replace_state(state: EntryState, **changes: Any) -> EntryState:
    return msgspec.structs.replace(state, **changes)
