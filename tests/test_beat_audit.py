"""Regression tests from an audit of beat: entries a scheduler cannot read, deploys that
change a schedule, clocks that jump.

Fast tests on the in-memory broker (SQLite for the command line) with a fake clock, as in
``tests/test_beat.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from click.testing import CliRunner

from celeriac import Celeriac, ConfigurationError
from celeriac.beat import Every, Scheduler
from celeriac.beat.entries import EntryRecord, EntrySpec
from celeriac.cli import cli
from tests.conftest import run_celeriac
from tests.test_beat import Clock, app, queued

__all__ = ["app"]  # the fixture, shared with tests/test_beat.py


@pytest.fixture
def clock(app: Celeriac) -> Clock:
    """On an hour boundary, a day ahead (run-time changes are stamped with it too)."""
    app.beat.clock = Clock(Every(3600).next_after(time.time() + 86_400))
    return app.beat.clock


# -- a stored entry this scheduler cannot rebuild is said, not skipped in silence ------------

# A zone this host does not have: what a scheduler in an image without tzdata sees of an
# entry that `celeriac beat add --tz Europe/Kyiv` stored from a laptop.
NO_SUCH_ZONE = "Mars/Olympus"


def store_unreadable(app: Celeriac, clock: Clock) -> None:
    spec = EntrySpec(task="shop.report", cron="0 3 * * *", tz=NO_SUCH_ZONE)
    app.beat.store.register("report")
    app.beat.store.write_record("report", EntryRecord(spec=spec, changed_at=clock.now - 1))


def test_a_stored_entry_the_scheduler_cannot_read_is_logged_once_as_an_error(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store_unreadable(app, clock)
    scheduler = Scheduler(app, clock=clock)
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        scheduler.step()
        clock.now += 3600
        scheduler.step()
    assert queued(app) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "report" in errors[0] and NO_SUCH_ZONE in errors[0] and "--replace" in errors[0]
    first = caplog.records[0].getMessage()
    assert "none yet" not in first, first  # there is one; this scheduler cannot read it


def test_beat_list_shows_what_is_stored_and_why_it_is_not_scheduled(
    clock: Clock, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    store_unreadable(Celeriac("beat-audit", broker=url), clock)
    result = CliRunner().invoke(cli, ["--broker", url, "beat", "list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"report  cron 0 3 * * * ({NO_SUCH_ZONE})  unreadable here" in result.output
    assert "task shop.report" in result.output
    assert f"cannot be scheduled here: cron '0 3 * * *': unknown time zone '{NO_SUCH_ZONE}'" in (
        result.output
    )


def test_changing_an_unreadable_entry_says_to_redefine_it(app: Celeriac, clock: Clock) -> None:
    store_unreadable(app, clock)
    with pytest.raises(ConfigurationError, match=f"cannot be read here.*{NO_SUCH_ZONE}.*--replace"):
        app.beat.change("report", args=[1])


# -- a deploy that changes an entry's schedule in code -----------------------------------------


def deployed(url: str, clock: Clock, **schedule: Any) -> Celeriac:
    """A new release of the app: the same entry from code, on the given schedule."""
    release = Celeriac("beat-audit", broker=url)
    release.beat.clock = clock
    release.periodic(name="sync", **schedule)(release.task(lambda: None, name="shop.sync"))
    return release


def test_a_deploy_that_changes_a_schedule_reports_no_ticks_lost_before_it(
    clock: Clock, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    Scheduler(deployed(url, clock, cron="0 * * * *"), clock=clock).step()  # sends hh:00
    clock.now += 40 * 60  # at hh:40 the entry becomes minutely
    release = deployed(url, clock, every=60)
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        Scheduler(release, clock=clock).step()
    lines = [r.getMessage() for r in caplog.records]
    assert any("sent tick of sync" in line for line in lines), lines
    # hh:01..hh:39 were never ticks: the entry was hourly then.
    assert not [line for line in lines if "not sent" in line or "missed" in line], lines
    assert release.beat.get("sync").last_run == clock.now


# -- clocks: set back, or ahead on another host ------------------------------------------------


def test_a_clock_set_back_says_why_no_tick_is_sent(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.beat.periodic(app.task(lambda: None, name="shop.sync"), every=60, name="sync")
    scheduler = Scheduler(app, clock=clock, ident="s1")
    scheduler.step()  # sends the tick for hh:00
    assert len(queued(app)) == 1
    clock.now -= 3600  # the system time is set back an hour
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        for _ in range(3):
            clock.now += 60
            scheduler.step()
    assert queued(app) == []  # those ticks were sent already: none twice
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # said once, not at every pass
    assert "sync" in warnings[0] and "59m ahead" in warnings[0] and "NTP" in warnings[0]


def test_a_scheduler_whose_clock_is_ahead_is_named_by_the_others(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.beat.periodic(app.task(lambda: None, name="shop.sync"), every=60, name="sync")
    Scheduler(app, clock=lambda: clock.now + 300, ident="fast-host:7").step()
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        Scheduler(app, clock=clock, ident="s2").step()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "fast-host:7" in warning and "5m ahead" in warning, warning


def test_ticks_skipped_by_a_clock_that_jumped_ahead_name_the_jump_as_a_cause(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.beat.periodic(app.task(lambda: None, name="shop.sync"), every=60, name="sync")
    scheduler = Scheduler(app, clock=clock)
    scheduler.step()
    clock.now += 2 * 3600  # the system time is set two hours ahead while it waits
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        scheduler.step()
    (warning,) = [r.getMessage() for r in caplog.records]
    # It said "the broker did not answer for that long, or this process was paused".
    assert "were not sent" in warning and "clock jumped ahead" in warning, warning


# -- an entry whose task this app does not know ------------------------------------------------


def test_an_entry_whose_task_is_not_registered_is_warned_of_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    typo = {"heartbeat": {"task": "shop.heartbeet", "schedule": 60.0}}
    app = Celeriac("beat-audit", broker="memory://", beat_schedule=typo)
    app.beat.clock = clock
    app.task(lambda: None, name="shop.heartbeat")
    scheduler = Scheduler(app, clock=clock)
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        for _ in range(3):
            scheduler.step()
            clock.now += 60
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "heartbeat" in warning and "shop.heartbeet" in warning, warning
    assert "does not register" in warning


def test_a_scheduler_whose_app_has_no_tasks_sends_by_name_without_a_warning(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.beat.add("report", "other.service.report", every=60)
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        clock.now += 60
        Scheduler(app, clock=clock).step()
    assert len(queued(app)) == 1
    assert [r.getMessage() for r in caplog.records] == []


# -- two code versions defining one entry differently ------------------------------------------


def two_versions(clock: Clock) -> tuple[Celeriac, Celeriac]:
    """Old and new code on one broker: entry digest sends shop.add, then shop.refund."""
    from celeriac.brokers.memory import MemoryBroker

    broker = MemoryBroker()
    old, new = Celeriac("shop", broker="memory://"), Celeriac("shop", broker="memory://")
    for version, task in ((old, "shop.add"), (new, "shop.refund")):
        version.use_broker(broker)
        version.beat.clock = clock
        version.beat.periodic(version.task(lambda: None, name=task), every=60, name="digest")
    return old, new


def test_schedulers_of_two_code_versions_defining_one_entry_say_so(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Old code: digest sends shop.add; new code: shop.refund. Each tick ran whichever
    # scheduler claimed it, both tasks at random, said by neither; beat list named the
    # local code's task for a tick the other definition sent.
    old, new = two_versions(clock)
    olds, news = (
        Scheduler(old, clock=clock, ident="old:1"),
        Scheduler(new, clock=clock, ident="new:2"),
    )
    same = Scheduler(old, clock=clock, ident="old:3")  # another of the old code: quiet
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        olds.step()  # the old code sends a tick
        for scheduler in (news, same, olds, news, olds, same):
            clock.now += 60
            scheduler.step()
    news_says, olds_says = [r.getMessage() for r in caplog.records]  # once each way
    assert (
        "entry digest is defined differently by scheduler new:2, which sent its last tick as "
        "task shop.refund (every 1m); this scheduler sends it as task shop.add (every 1m)"
    ) in olds_says
    assert "scheduler old:1" in news_says and "sends it as task shop.refund" in news_says
    assert "a deploy under way" in olds_says
    info = old.beat.get("digest")  # same sent last: old code's task, listed as such
    assert (info.task, info.last_sent_as) == ("shop.add", None)
    clock.now += 60
    news.step()
    info = old.beat.get("digest")
    assert (info.task, info.last_sent_as, info.sent_by) == ("shop.add", "shop.refund", "new:2")


def test_a_scheduler_started_after_a_deploy_changed_an_entry_says_nothing(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = two_versions(clock)
    Scheduler(old, clock=clock, ident="old:1").step()
    news = Scheduler(new, clock=clock, ident="new:2")  # the old one has stopped
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        for _ in range(3):
            clock.now += 60
            news.step()
    assert caplog.records == []


def test_beat_list_names_the_task_a_tick_of_other_code_was_sent_as(
    clock: Clock, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    (tmp_path / "oldshop.py").write_text(
        "from celeriac import Celeriac\n"
        f"app = Celeriac('shop', broker={url!r})\n"
        "app.beat.periodic(app.task(lambda: None, name='shop.add'), every=60, name='digest')\n"
    )
    new = Celeriac("shop", broker=url)
    new.beat.clock = clock
    new.beat.periodic(new.task(lambda: None, name="shop.refund"), every=60, name="digest")
    Scheduler(new, clock=clock, ident="new:2").step()
    listed = run_celeriac("-A", "oldshop", "beat", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    said = " ".join(listed.stdout.split())
    assert "task shop.add, next" in said, said  # what this code sends...
    assert ", sent as task shop.refund by new:2" in said, said  # ...and what was sent
