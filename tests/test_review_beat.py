"""Regression tests from a review of beat: bad send options, random cron, stalled passes.

Fast tests on the in-memory broker with a fake clock, as in ``tests/test_beat.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pytest
from click.testing import CliRunner

from celeriac import Celeriac, ConfigurationError
from celeriac.beat import Cron, Every, Scheduler, tick_id
from celeriac.beat.entries import EntryRecord, EntrySpec, EntryState
from celeriac.cli import cli
from celeriac.errors import UnknownEntry
from tests.test_beat import Clock, app, queued

__all__ = ["app"]  # the fixture, shared with tests/test_beat.py


@pytest.fixture
def clock(app: Celeriac) -> Clock:
    """On an hour boundary, a day ahead (run-time changes are stamped with it too)."""
    app.beat.clock = Clock(Every(3600).next_after(time.time() + 86_400))
    return app.beat.clock


# -- a send option that no tick can carry is refused when the entry is defined ---------------


BAD_OPTIONS: list[dict[str, Any]] = [
    {"priority": 10},
    {"queue": 5},
    {"headers": "not a dict"},
    {"time_limit": -1},
    {"expires": "soon"},
    {"expires": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)},  # one instant: every later tick dead
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=lambda o: "-".join(map(str, o.items())))
def test_a_bad_send_option_is_refused_when_the_entry_is_defined(
    app: Celeriac, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError, match="'nightly'"):
        app.beat.add("nightly", "shop.nightly", every=60, **options)
    with pytest.raises(ConfigurationError, match="'coded'"):
        app.beat.periodic(app.task(lambda: None, name="t.coded"), every=60, name="coded", **options)
    assert app.beat.entries() == []


def test_a_runtime_entry_with_a_timedelta_expiry_sends_its_ticks(
    app: Celeriac, clock: Clock
) -> None:
    # Stored as JSON, a timedelta came back as the string 'PT30S' and every tick failed.
    app.beat.add("fresh", "shop.fresh", every=60, expires=dt.timedelta(seconds=30))
    clock.now += 60
    Scheduler(app, clock=clock).step()
    (message,) = queued(app)
    assert message.id == tick_id("fresh", clock.now)
    assert message.expires is not None
    assert message.expires - message.sent_at == pytest.approx(30, abs=0.01)


def test_a_tick_that_cannot_be_sent_is_reported_once_and_shown_in_the_list(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # An entry stored by a process that did not check it (an older version, a script).
    spec = EntrySpec(task="shop.report", every=3600, options={"priority": 10})
    app.beat.store.register("report")
    app.beat.store.write_record("report", EntryRecord(spec=spec, changed_at=clock.now - 1))
    scheduler = Scheduler(app, clock=clock)
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        scheduler.step()
        clock.now += 31  # past the claim's lapse on a real clock: no second attempt
        scheduler.step()
    assert queued(app) == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert "report" in line and "priority" in line and "--replace" in line
    assert errors[0].exc_info is None, "a traceback for a bad option, every claim lapse"
    (info,) = app.beat.entries()
    assert info.last_error is not None and "priority" in info.last_error


def test_beat_list_shows_the_last_error(app: Celeriac, clock: Clock, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    stored = Celeriac("beat-review", broker=url)
    spec = EntrySpec(task="shop.report", every=3600, options={"queue": 5})
    stored.beat.store.register("report")
    stored.beat.store.write_record("report", EntryRecord(spec=spec, changed_at=clock.now - 1))
    Scheduler(stored, clock=clock).step()
    result = CliRunner().invoke(cli, ["--broker", url, "beat", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert "queue must be a str" in result.output
    wide = {"COLUMNS": "400"}
    result = CliRunner().invoke(cli, ["--broker", url, "beat", "list"], env=wide)
    assert "last tick not sent: task shop.report: queue must be a str" in result.output


def test_beat_list_prints_names_as_typed(tmp_path: Any) -> None:
    """Entry and task names are data: rich must not read "[red]" in them as markup."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    Celeriac("beat-review", broker=url).beat.add("report[red]", "shop.[b]report", every=60)
    result = CliRunner().invoke(cli, ["--broker", url, "beat", "list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "report[red]" in result.output and "shop.[b]report" in result.output


# -- cron: a random or hashed field is not a pure function of time ----------------------------


@pytest.mark.parametrize("expr", ["R * * * *", "0 R(0-5) * * *", "r/10 * * * *", "1,R * * * *"])
def test_a_random_cron_field_is_refused(expr: str) -> None:
    # croniter draws a new random minute each time it parses "R": every scheduler and
    # every pass saw other fire times, so an hourly entry was sent several times an hour.
    with pytest.raises(ConfigurationError, match="random"):
        Cron(expr)


def test_month_and_weekday_names_are_still_cron() -> None:
    assert Cron("0 0 * MAR FRI").next_after(0.0) > 0
    assert Cron("0 0 * * sun").describe() == "cron 0 0 * * sun (UTC)"


# -- a pass that stalled (a slow broker) does not send a stale tick as if on time -------------


def test_a_tick_found_late_after_a_stalled_read_follows_the_missed_policy(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.report"), every=3600, name="report")
    scheduler = Scheduler(app, clock=clock)
    scheduler.step()  # first sight at a fire time: sent
    assert len(queued(app)) == 1
    load = app.beat.load

    def stalled() -> Any:
        clock.now += 600  # the broker answered ten minutes late
        return load()

    app.beat.load = stalled  # type: ignore[method-assign]
    clock.now += 3600  # the next tick is due now, and the pass starts on time
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        scheduler.step()
    assert queued(app) == [], "a tick ten minutes late was sent under missed='skip'"
    assert any("missed the tick of report" in m for m in caplog.messages)


# -- run-time changes say what happened ------------------------------------------------------


def test_changing_an_entry_defined_in_another_process_says_how(app: Celeriac) -> None:
    # A scheduler whose code defines "nightly" recorded its state; this process (the CLI
    # without -A, say) lists the entry but does not have its definition.
    app.beat.store.register("nightly")
    app.beat.store.write_state(
        "nightly", EntryState(since=1.0, task="shop.nightly", schedule="every 1m")
    )
    assert [e.name for e in app.beat.entries()] == ["nightly"]
    with pytest.raises(UnknownEntry) as caught:
        app.beat.change("nightly", every=30)
    message = str(caught.value)
    assert "no periodic entry" not in message, "it is listed, so it is not unknown"
    assert "celeriac beat add nightly" in message and "--replace" in message


# -- cron: day of month and day of week, as cronie reads them ---------------------------------


def _days(expr: str, count: int) -> list[str]:
    cron, t, days = Cron(expr), dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() - 1, []
    for _ in range(count):
        t = cron.next_after(t)
        days.append(dt.datetime.fromtimestamp(t, dt.UTC).strftime("%a %d"))
    return days


def test_a_day_field_starting_with_a_star_restricts_the_other_as_in_cronie() -> None:
    # cronie: when the day-of-month or day-of-week field starts with "*", a day must match
    # both; croniter alone ran "0 0 */2 * 1" on every odd day *and* every Monday.
    assert _days("0 0 */2 * 1", 3) == ["Mon 01", "Mon 15", "Mon 29"]
    assert _days("0 0 */1 * 1", 2) == ["Mon 01", "Mon 08"]
    # Both restricted, neither starting with "*": either may match (cron's classic OR).
    assert _days("0 0 1,15 * 1", 6) == ["Mon 01", "Mon 08", "Mon 15", "Mon 22", "Mon 29", "Thu 01"]


# -- pause and resume say what they did, and a no-op changes nothing -------------------------


def test_resuming_an_entry_that_is_not_paused_changes_nothing(app: Celeriac, clock: Clock) -> None:
    app.beat.add("ping", "shop.ping", every=60)
    scheduler = Scheduler(app, clock=clock)
    clock.now += 60
    scheduler.step()
    clock.now += 60.5  # the next tick is due; a pass is about to send it
    assert app.beat.resume("ping") == "ping was not paused; nothing changed"
    scheduler.step()
    assert len(queued(app)) == 2, "a resume that did nothing dropped the due tick"
    assert app.beat.pause("ping") == "paused ping"
    assert app.beat.pause("ping") == "ping was already paused; nothing changed"


def test_cli_pause_and_resume_say_when_nothing_changed(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    runner = CliRunner()
    assert (
        runner.invoke(cli, ["--broker", url, "beat", "add", "a", "t.x", "--every", "1m"]).exit_code
        == 0
    )
    result = runner.invoke(cli, ["--broker", url, "beat", "resume", "a"])
    assert (result.exit_code, result.output) == (0, "a was not paused; nothing changed\n")
    result = runner.invoke(cli, ["--broker", url, "beat", "pause", "a"])
    assert (result.exit_code, result.output) == (0, "paused a\n")
