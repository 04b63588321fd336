"""What a scheduler says about its entries, apart from sending them (a mixin of
:class:`celeriac.beat.scheduler.Scheduler`): entries added, changed or removed; entries it
cannot read or whose task it does not know; clocks that disagree. Each is said once, not at
every pass.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from celeriac.beat.schedules import format_seconds

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.beat.entries import Entry, EntryState, Loaded
    from celeriac.beat.schedules import Schedule

log = logging.getLogger("celeriac.beat")

# Seconds a tick's recorded send time may be ahead of this scheduler's clock before it says
# that clocks disagree: more than a send takes, far less than a skew that moves a job.
_SKEW_WARN = 2.0


class Notices:
    """The log lines of a scheduler's pass that are about entries, not ticks.

    Example:
        >>> from celeriac.beat import Scheduler
        >>> issubclass(Scheduler, Notices)
        True
    """

    app: Celeriac
    _known: dict[str, tuple[Entry | None, bool]] | None
    _unreadable: dict[str, str]  # entry -> why this scheduler cannot schedule it
    _unregistered: set[tuple[str, str]]  # (entry, task) said to be unknown here
    _skewed: set[str]  # entries whose last send is ahead of this clock (said)
    _sent_here: set[str]  # entries this scheduler sent a tick of
    _rivals: set[tuple[str, str, str]]  # (entry, task, schedule) of other code (said)
    ident: str

    def _check_clock(self, name: str, schedule: Schedule, state: EntryState, now: float) -> None:
        """Warn, once until it passes, when the entry's last tick was sent at a time still
        ahead of this scheduler's clock: this clock went back, or the sender's is ahead.

        Either way ticks are held until this clock passes the last one sent (none is sent
        twice), and with a sender ahead they go out early; both were silent, so an hour
        without ticks after the system time was set back had no explanation.
        """
        ahead = (state.last_sent_at or -math.inf) - now
        if ahead <= _SKEW_WARN:
            self._skewed.discard(name)
            return
        if name in self._skewed:
            return
        self._skewed.add(name)
        log.warning(
            "beat: the last tick of %s (for %s) was sent by %s at a time %s ahead of this "
            "scheduler's clock: this host's clock went back, or that scheduler's clock is "
            "ahead. Ticks already sent are not sent again, and a scheduler whose clock is "
            "ahead sends them early: keep the clocks of every scheduler's host in sync (NTP)",
            name,
            at(schedule, state.last_tick, now) if state.last_tick is not None else "?",
            state.sent_by or "a scheduler",
            format_seconds(round(ahead)),
        )

    def _check_rival(self, name: str, entry: Entry, state: EntryState) -> None:
        """Warn, once per definition, when a scheduler running other code (a deploy under
        way) sent this entry's last tick under another definition after this one sent it.

        Each tick runs whichever definition claims it: old and new code defining one
        entry name with different tasks sent both tasks at random, and said nothing.
        Checked only once this scheduler has sent the entry itself, so a scheduler started
        after a deploy changed the entry (the old one gone) says nothing.
        """
        if name not in self._sent_here or state.sent_by in (None, self.ident):
            return
        theirs = (name, state.task, state.schedule)
        if (state.task, state.schedule) == (entry.task, entry.schedule.describe()):
            return
        if theirs in self._rivals:
            return
        self._rivals.add(theirs)
        log.warning(
            "beat: entry %s is defined differently by scheduler %s, which sent its last tick "
            "as task %s (%s); this scheduler sends it as task %s (%s). Schedulers of two code "
            "versions are running, and each tick runs whichever definition claims it. This "
            "ends when every scheduler runs the same code (a deploy under way); if both "
            "definitions are meant to stay, give one of them another name",
            name,
            state.sent_by,
            state.task or "?",
            state.schedule or "?",
            entry.task,
            entry.schedule.describe(),
        )

    def _note_changes(self, loaded: dict[str, Loaded], now: float) -> None:
        current: dict[str, tuple[Entry | None, bool]] = {
            n: (item.entry, item.paused) for n, item in loaded.items() if item.entry
        }
        before, self._known = self._known, current
        if before is None:
            described = "; ".join(
                f"{n} ({e.schedule.describe()}{', paused' if p else ''})"
                for n, (e, p) in current.items()
                if e is not None
            )
            count = len(current)
            log.info(
                "beat: scheduling %d entr%s: %s",
                count,
                "y" if count == 1 else "ies",
                described
                or (
                    "none it can read (see below)"
                    if any(item.problem for item in loaded.values())
                    else "none yet (add some: celeriac beat add)"
                ),
            )
            return
        for name, (entry, paused) in current.items():
            old = before.get(name)
            assert entry is not None
            upcoming = at(entry.schedule, entry.schedule.next_after(now), now)
            if old is None:
                log.info(
                    "beat: entry %s added (%s)%s",
                    name,
                    entry.schedule.describe(),
                    " paused" if paused else f"; next at {upcoming}",
                )
            elif old[0] != entry:
                log.info("beat: entry %s changed (%s)", name, entry.schedule.describe())
            elif old[1] != paused:
                log.info(
                    "beat: entry %s %s", name, "paused" if paused else f"resumed; next {upcoming}"
                )
        for name in before.keys() - current.keys():
            log.info("beat: entry %s removed", name)

    def _note_unreadable(self, loaded: dict[str, Loaded]) -> None:
        """Say which stored entries this scheduler cannot schedule, once per reason.

        They were skipped without a word: a run-time entry in a zone this host does not
        have (no tzdata in the image) never ran, while the start-up line said "none yet".
        """
        current = {n: item.problem for n, item in loaded.items() if item.problem is not None}
        for name, problem in current.items():
            if self._unreadable.get(name) != problem:
                log.error(
                    "beat: entry %s is not scheduled by this scheduler: %s. A scheduler that "
                    "can read it (a newer celeriac; a host that has the zone: pip install "
                    "tzdata) sends its ticks; if none runs, redefine the entry: celeriac beat "
                    "add %s TASK --cron/--every ... --replace",
                    name,
                    problem,
                    name,
                )
        self._unreadable = current

    def _note_unregistered(self, loaded: dict[str, Loaded]) -> None:
        """Warn, once per entry and task, of an entry whose task this app does not register.

        A typo in ``beat_schedule`` (Celery's most common beat mistake) sent a tick that
        every worker put back and then dead-lettered, each tick, with nothing said where
        the schedule is run. A scheduler whose app registers no task at all sends by name
        on purpose (the workers run other code), and is not warned.
        """
        if not self.app.tasks:
            return
        for name, item in loaded.items():
            entry = item.entry
            if entry is None or entry.task in self.app.tasks:
                continue
            if (name, entry.task) not in self._unregistered:
                self._unregistered.add((name, entry.task))
                log.warning(
                    "beat: entry %s sends task %s, which this app does not register: check "
                    "the name (workers that do not know it put its ticks back, then "
                    "dead-letter them); if workers running other code know it, ignore this",
                    name,
                    entry.task,
                )


def at(schedule: Schedule, t: float, now: float) -> str:
    """A fire time for a log line: ``03:00:00 EEST``, with the date only if not today.

    Example:
        >>> from celeriac.beat import Cron
        >>> at(Cron("0 3 * * *", tz="UTC"), 10800.0, 0.0), at(Cron("@daily"), 86400.0, 0.0)
        ('03:00:00 UTC', '1970-01-02 00:00:00 UTC')
    """
    text, today = schedule.format(t), schedule.format(now)
    return text[11:] if text[:10] == today[:10] else text
