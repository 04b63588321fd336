"""Periodic tasks (issue 7): schedules, exactly-once ticks, missed ticks, run-time changes.

Fast tests on the in-memory broker. Schedulers (and ``app.beat``'s stamps of run-time
changes) get an injectable clock, so a test steps through hours of ticks in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from celeriac import Celeriac, ConfigurationError
from celeriac.beat import Cron, Every, Scheduler, crontab, parse_schedule, tick_id
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.records import DeadLetter, Delivery
from celeriac.cli import cli
from celeriac.errors import BrokerConnectionError, UnknownEntry
from celeriac.message import Message
from celeriac.worker.executor import Executor
from celeriac.worker.inline import run_queued
from tests.conftest import ROOT

UTC = dt.UTC


class Clock:
    """A clock that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(text: str) -> float:
    """Unix time of an ISO 8601 timestamp with an offset (``2024-03-10T07:00:00+00:00``)."""
    return dt.datetime.fromisoformat(text).timestamp()


def utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def fire_times(schedule: Cron, start: str, count: int) -> list[str]:
    t, times = at(start), []
    for _ in range(count):
        t = schedule.next_after(t)
        times.append(utc(t))
    return times


@pytest.fixture
def app() -> Celeriac:
    return Celeriac("beat-tests", broker="memory://")


@pytest.fixture
def clock(app: Celeriac) -> Clock:
    """On a minute boundary, a day ahead; run-time changes are stamped with it too."""
    fake = Clock(Every(60).next_after(time.time() + 86_400))
    app.beat.clock = fake
    return fake


def queued(app: Celeriac) -> list[Message]:
    """Take every queued message (ready or not yet expired) out of the memory broker."""
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    queues = [s.queue for s in broker.stats()]
    taken = broker.fetch(queues, "test", limit=10_000, lease_seconds=30, timeout=0)
    return [app.codec.decode(d.body) for d in taken]


# -- schedules: cron across daylight-saving changes -------------------------------------


def test_cron_in_kyiv_across_spring_forward() -> None:
    # 2024-03-31: 03:00 EET becomes 04:00 EEST (01:00 UTC); 03:xx never happens.
    every_30 = Cron("*/30 * * * *", tz="Europe/Kyiv")
    assert fire_times(every_30, "2024-03-30T23:50:00+00:00", 4) == [
        "2024-03-31 00:00",  # 02:00 EET
        "2024-03-31 00:30",  # 02:30 EET
        "2024-03-31 01:00",  # 04:00 EEST: the cadence holds in real time
        "2024-03-31 01:30",
    ]
    # A fixed-time job in the skipped hour runs at the change, once, then as usual.
    at_0330 = Cron("30 3 * * *", tz="Europe/Kyiv")
    assert fire_times(at_0330, "2024-03-30T12:00:00+00:00", 3) == [
        "2024-03-31 01:00",  # 04:00 EEST, the moment the clocks jumped
        "2024-04-01 00:30",  # 03:30 EEST
        "2024-04-02 00:30",
    ]
    assert at_0330.format(at("2024-03-31T01:00:00+00:00")) == "2024-03-31 04:00:00 EEST"


def test_cron_in_kyiv_across_fall_back() -> None:
    # 2024-10-27: 04:00 EEST becomes 03:00 EET (01:00 UTC); 03:xx happens twice.
    every_30 = Cron("*/30 * * * *", tz="Europe/Kyiv")
    assert fire_times(every_30, "2024-10-26T23:50:00+00:00", 6) == [
        "2024-10-27 00:00",  # 03:00 EEST
        "2024-10-27 00:30",  # 03:30 EEST
        "2024-10-27 01:00",  # 03:00 EET: the repeated hour runs too
        "2024-10-27 01:30",  # 03:30 EET
        "2024-10-27 02:00",  # 04:00 EET
        "2024-10-27 02:30",
    ]
    at_0330 = Cron("30 3 * * *", tz="Europe/Kyiv")
    assert fire_times(at_0330, "2024-10-26T12:00:00+00:00", 2) == [
        "2024-10-27 00:30",  # 03:30 EEST only: a fixed-time job runs once
        "2024-10-28 01:30",  # 03:30 EET
    ]


def test_cron_in_new_york_both_directions() -> None:
    nine = Cron("0 9 * * *", tz="America/New_York")
    assert fire_times(nine, "2024-03-09T00:00:00+00:00", 2) == [
        "2024-03-09 14:00",  # 09:00 EST
        "2024-03-10 13:00",  # 09:00 EDT
    ]
    assert fire_times(nine, "2024-11-02T00:00:00+00:00", 2) == [
        "2024-11-02 13:00",  # 09:00 EDT
        "2024-11-03 14:00",  # 09:00 EST
    ]
    at_0230 = Cron("30 2 * * *", tz="America/New_York")  # 02:30 is skipped on 2024-03-10
    assert fire_times(at_0230, "2024-03-09T12:00:00+00:00", 2) == [
        "2024-03-10 07:00",  # 03:00 EDT: at the change
        "2024-03-11 06:30",  # 02:30 EDT
    ]
    at_0130 = Cron("30 1 * * *", tz="America/New_York")  # 01:30 happens twice on 2024-11-03
    assert fire_times(at_0130, "2024-11-03T00:00:00+00:00", 2) == [
        "2024-11-03 05:30",  # 01:30 EDT, once
        "2024-11-04 06:30",  # 01:30 EST
    ]
    hourly = Cron("@hourly", tz="America/New_York")
    assert fire_times(hourly, "2024-11-03T04:30:00+00:00", 3) == [
        "2024-11-03 05:00",  # 01:00 EDT
        "2024-11-03 06:00",  # 01:00 EST
        "2024-11-03 07:00",  # 02:00 EST
    ]


@pytest.mark.parametrize(
    ("expr", "tz", "start"),
    [
        ("*/30 * * * *", "Europe/Kyiv", "2024-10-26T22:00:00+00:00"),
        ("30 3 * * *", "Europe/Kyiv", "2024-03-29T00:00:00+00:00"),
        ("*/15 1 * * *", "America/New_York", "2024-11-03T04:00:00+00:00"),
        ("30 2 * * *", "America/New_York", "2024-03-08T00:00:00+00:00"),
    ],
)
def test_latest_and_next_agree_across_dst(expr: str, tz: str, start: str) -> None:
    cron = Cron(expr, tz=tz)
    t = at(start)
    for _ in range(12):
        following = cron.next_after(t)
        assert following > t
        assert cron.latest(following) == following
        assert cron.latest(following - 1) <= t or cron.latest(following - 1) == t
        assert cron.next_after(cron.latest(following - 1)) == following
        t = following


def test_every_is_aligned_to_the_epoch_so_every_scheduler_agrees() -> None:
    every = Every(30)
    assert every.next_after(at("2024-01-01T12:00:07+00:00")) == at("2024-01-01T12:00:30+00:00")
    assert every.latest(at("2024-01-01T12:00:30+00:00")) == at("2024-01-01T12:00:30+00:00")
    half = Every(0.5)
    assert [half.next_after(10.0), half.latest(10.49), half.latest(10.5)] == [10.5, 10.0, 10.5]


def test_a_step_of_a_field_s_whole_span_is_taken() -> None:
    # */60 and */24 are common ways to write hourly and daily (refused for a while, an app
    # whose module had one no longer imported).
    assert isinstance(parse_schedule("*/60 * * * *", None), Cron)
    assert isinstance(parse_schedule("0 */24 * * *", None), Cron)


@pytest.mark.parametrize(
    ("value", "tz", "message"),
    [
        ("61 * * * *", None, "not a valid five-field cron"),
        ("* * * * * *", None, "not a valid five-field cron"),
        ("0 0 30 2 *", None, "never fires"),
        # Taken, */61 fired once an hour (it matches minute 0 alone).
        ("*/61 * * * *", None, r"step of 61 in the minute field, which has 60 values"),
        ("0 0 * * 1-5/8", None, r"step of 8 in the weekday field"),
        ("0 3 * * *", "Mars/Olympus", "unknown time zone"),
        (30, "Europe/Kyiv", "only applies to cron"),
        (0.01, None, "at least"),
        (1e12, None, "at most 3153600000 seconds"),  # was: "year 33658 is out of range"
        (1e300, None, "at most"),  # was: a bare OverflowError
        ([1], None, "give a cron string"),
    ],
)
def test_bad_schedules_say_what_is_wrong(value: Any, tz: str | None, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_schedule(value, tz)


def test_tick_ids_are_deterministic_and_readable() -> None:
    assert tick_id("report", at("2024-03-31T01:00:00+00:00")) == "beat:report:20240331T010000Z"
    assert tick_id("fast", 1.25) == "beat:fast:19700101T000001.250Z"


# -- defining entries -----------------------------------------------------------------------


def test_periodic_registers_a_task_and_an_entry(app: Celeriac) -> None:
    @app.periodic(cron="*/5 * * * *", tz="Europe/Kyiv")
    def refresh_rates() -> str:
        return "ok"

    @app.periodic(every=dt.timedelta(seconds=30), name="report-often", queue="reports")
    @app.task(time_limit=20)
    def report(kind: str = "daily") -> None: ...

    @app.task
    def cleanup(days: int) -> None: ...

    assert app.periodic(cleanup, cron="0 3 * * *", args=(30,), missed="run_once") is cleanup
    entries = app.beat.static_entries()
    assert refresh_rates.name in app.tasks and refresh_rates() == "ok"
    assert entries[refresh_rates.name][0].schedule == Cron("*/5 * * * *", tz="Europe/Kyiv")
    assert entries["report-often"][0].options == {"queue": "reports"}
    assert report.options.time_limit == 20
    assert entries[cleanup.name][0].args == (30,)
    assert entries[cleanup.name][0].missed == "run_once"
    with pytest.raises(ConfigurationError, match="defined twice"):
        app.periodic(cleanup, every=60)
    with pytest.raises(ConfigurationError, match="exactly one of"):
        app.periodic(cleanup, every=60, cron="* * * * *", name="both")
    with pytest.raises(ConfigurationError, match="unknown option"):
        app.periodic(cleanup, every=60, name="typo", quue="x")
    with pytest.raises(ConfigurationError, match="missed="):
        app.periodic(cleanup, every=60, name="policy", missed="burst")
    with pytest.raises(ConfigurationError, match="missing a required argument: 'days'"):
        app.periodic(cleanup, every=60, name="no-days")


def test_beat_schedule_in_celerys_format(app: Celeriac) -> None:
    app.conf.beat_timezone = "America/New_York"
    app.conf.beat_schedule = {
        "add-every-30-seconds": {"task": "tasks.add", "schedule": 30.0, "args": (16, 16)},
        "every-minute": {"task": "tasks.ping", "schedule": dt.timedelta(minutes=1)},
        "nightly": {
            "task": "tasks.report",
            "schedule": "0 3 * * *",
            "kwargs": {"kind": "daily"},
            "options": {"queue": "reports", "expires": 600},
            "missed": "run_once",
        },
        "kyiv": {"task": "tasks.report", "schedule": "0 9 * * 1-5", "tz": "Europe/Kyiv"},
    }
    entries = {name: entry for name, (entry, _) in app.beat.static_entries().items()}
    assert entries["add-every-30-seconds"].schedule == Every(30)
    assert entries["add-every-30-seconds"].args == (16, 16)
    assert entries["every-minute"].schedule == Every(60)
    assert entries["nightly"].schedule == Cron("0 3 * * *", tz="America/New_York")
    assert entries["nightly"].options == {"queue": "reports", "expires": 600}
    assert entries["kyiv"].schedule == Cron("0 9 * * 1-5", tz="Europe/Kyiv")
    app.conf.beat_schedule = {"bad": {"task": "t", "schedule": 5, "relative": True}}
    with pytest.raises(ConfigurationError, match=r"beat_schedule\['bad'\]: unknown key"):
        app.beat.static_entries()


def test_celery_s_crontab_fields_make_a_cron_string_in_the_entry_s_zone(app: Celeriac) -> None:
    # `"schedule": crontab(minute=0, hour="*/3")` is how Celery configs spell cron; the
    # import was the one line that had to change, and there was nothing to import.
    assert crontab() == "* * * * *"
    assert crontab(minute=0, hour="*/3") == "0 */3 * * *"
    assert crontab(minute=30, hour=7, day_of_week="mon-fri") == "30 7 * * mon-fri"
    assert crontab(minute=[0, 30], day_of_month="1,15", month_of_year=(1, 7)) == "0,30 * 1,15 1,7 *"
    assert crontab(minute={45, 15}) == "15,45 * * * *"
    app.conf.beat_timezone = "Europe/Paris"
    app.conf.beat_schedule = {
        "every-3h": {"task": "tasks.report", "schedule": crontab(minute=0, hour="*/3")},
        "kyiv": {"task": "tasks.report", "schedule": crontab(hour=9), "tz": "Europe/Kyiv"},
    }
    entries = {name: entry for name, (entry, _) in app.beat.static_entries().items()}
    assert entries["every-3h"].schedule == Cron("0 */3 * * *", tz="Europe/Paris")
    assert entries["kyiv"].schedule == Cron("* 9 * * *", tz="Europe/Kyiv")


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"minute": 61}, "crontab(minute=61) is '61 * * * *': cron '61 * * * *': not a valid"),
        ({"hour": "noon"}, "crontab(hour='noon') is '* noon * * *'"),
        ({"minute": None}, "crontab(minute=None): give a cron field"),
        ({"hour": True}, "crontab(hour=True): give a cron field"),
        ({"day_of_week": ""}, "crontab(day_of_week=''): an empty field; give '*' for every"),
    ],
)
def test_a_crontab_that_is_no_cron_names_the_field(fields: dict[str, Any], said: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        crontab(**fields)
    assert str(caught.value).startswith(said), caught.value


def test_an_entry_whose_arguments_cannot_fit_its_task_is_refused(app: Celeriac) -> None:
    @app.task(name="tasks.report")
    def report(kind: str) -> str:
        return kind

    app.conf.beat_schedule = {"nightly": {"task": "tasks.report", "schedule": "0 3 * * *"}}
    with pytest.raises(ConfigurationError, match=r"entry 'nightly'.*missing .* 'kind'"):
        app.beat.static_entries()  # a scheduler refuses to start, not a failure every night
    app.conf.beat_schedule = {}
    with pytest.raises(ConfigurationError, match="too many positional arguments"):
        app.beat.add("hourly", report, every=3600, args=("daily", "extra"))
    app.beat.add("hourly", report, every=3600, kwargs={"kind": "hourly"})
    with pytest.raises(ConfigurationError, match="unexpected keyword argument 'sort'"):
        app.beat.change("hourly", kwargs={"kind": "hourly", "sort": True})
    app.beat.add("elsewhere", "other.service.task", every=60, args=(1, 2, 3))  # not known here


def test_an_entry_whose_ticks_are_over_the_size_limit_is_refused_when_defined(
    app: Celeriac, sqlite_url: str
) -> None:
    # Accepted, its every tick was refused at send: one ERROR a tick, nothing ever ran.
    big = "x" * (app.conf.task_payload_max_bytes + 1)
    app.conf.beat_schedule = {"bulk": {"task": "tasks.bulk", "schedule": 60, "args": [big]}}
    with pytest.raises(ConfigurationError, match=r"entry 'bulk'.*over task_payload_max_bytes"):
        app.beat.static_entries()  # a scheduler refuses to start
    app.conf.beat_schedule = {}
    with pytest.raises(ConfigurationError, match=r"positional argument 0 .*pass its id"):
        app.beat.add("bulk", "tasks.bulk", every=60, args=[big])
    with pytest.raises(ConfigurationError, match="over task_payload_max_bytes"):
        app.beat.add("bulk", "tasks.bulk", every=60, kwargs={"rows": big})  # unknown task too
    assert app.beat.entries() == []
    app.beat.add("bulk", "tasks.bulk", every=60, args=["small"])
    with pytest.raises(ConfigurationError, match="over task_payload_max_bytes"):
        app.beat.change("bulk", args=[big])
    assert app.beat.get("bulk").args == ("small",)
    code, output = beat_cli(sqlite_url, "add", "bulk", "t", "--every", "1m", "--args", f'["{big}"]')
    assert code == 1 and "over task_payload_max_bytes" in output and "Traceback" not in output


# -- exactly-once ticks -------------------------------------------------------------------


def test_three_schedulers_send_each_tick_once(app: Celeriac, clock: Clock) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.ping"), every=1, name="ping")
    schedulers = [Scheduler(app, clock=clock, ident=f"s{i}") for i in range(3)]
    start = clock.now
    clock.now = start - 0.5  # the entry is first seen just before its first tick
    schedulers[0].step()
    for second in range(30):
        for scheduler in random.sample(schedulers, 3):  # any order, slightly late or not
            clock.now = start + second + random.uniform(0, 0.2)
            scheduler.step()
    messages = queued(app)
    assert sorted(m.id for m in messages) == [tick_id("ping", start + s) for s in range(30)]
    # The message of a tick expires when the next tick is due, and says which tick it is.
    first = min(messages, key=lambda m: m.id)
    assert first.expires == start + 1
    assert first.headers == {"beat_entry": "ping", "beat_tick": start}
    state = app.beat.get("ping")
    assert state.last_run == start + 29 and state.sent_by in {"s0", "s1", "s2"}


def test_a_tick_claimed_by_a_scheduler_that_died_is_taken_over(app: Celeriac, clock: Clock) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.ping"), every=60, name="ping")
    Scheduler(app, clock=clock).step()  # first sight of the entry, and its first tick
    assert len(queued(app)) == 1
    clock.now += 60
    # Another scheduler claimed this tick and died before sending it.
    assert app.beat.store.claim("ping", clock.now, "dead:1", ttl=0.2)
    survivor = Scheduler(app, clock=clock)
    survivor.step()
    assert queued(app) == []
    time.sleep(0.25)  # the claim lapses (the broker's clock is the real one)
    clock.now += 0.3
    survivor.step()
    assert [m.id for m in queued(app)] == [tick_id("ping", clock.now - 0.3)]


def test_tick_sent_by_another_scheduler_is_not_sent_again(app: Celeriac, clock: Clock) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.ping"), every=60, name="ping")
    first, second = Scheduler(app, clock=clock), Scheduler(app, clock=clock)
    clock.now += 30
    first.step()
    second.step()
    clock.now += 30
    first.step()
    # Even with the state unread (as if it were stale), the claim says "sent".
    app.broker.kv_delete("beat:state:ping")
    second.step()
    assert len(queued(app)) == 1


def _taken_over_after_sending(app: Celeriac, clock: Clock, runs: list[str]) -> None:
    """A scheduler sends a tick and dies before its ``sent`` mark; the tick runs; another
    scheduler takes the lapsed claim over and sends the tick a second time."""
    app.beat.periodic(
        app.task(lambda: runs.append("ran"), name="t.ping", ignore_result=True),
        every=1,
        name="ping",
    )
    Scheduler(app, clock=clock).step()  # first sight of the entry: its first tick is sent
    run_queued(app)
    runs.clear()
    clock.now += 1
    dying = Scheduler(app, clock=clock, ident="dying")

    def die(*args: object) -> None:
        raise RuntimeError("SIGKILL between the send and the mark")

    dying.app.beat.store.mark_sent = die  # type: ignore[method-assign]
    dying.step()
    del dying.app.beat.store.mark_sent  # back to the class's method for the survivor
    survivor = Scheduler(app, clock=clock, ident="survivor")
    survivor.step()  # finds the tick claimed and unconfirmed: it looks again at the lapse
    run_queued(app)
    assert runs == ["ran"]
    time.sleep(0.55)  # the claim (half the 1-s interval) lapses on the broker's real clock
    clock.now += 0.5
    survivor.step()


def test_a_second_send_of_a_finished_tick_is_skipped_by_the_worker(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 15's rare failure: the deterministic id cannot catch a second send once
    an ``ignore_result`` tick has finished; the worker's tick fence does."""
    runs: list[str] = []
    _taken_over_after_sending(app, clock, runs)
    assert [s.ready for s in app.broker.stats()] == [1], "the takeover sent nothing"
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        assert run_queued(app) == 1
    assert runs == ["ran"], "the tick ran twice"
    (line,) = [r.getMessage() for r in caplog.records if "sent twice" in r.getMessage()]
    assert f"t.ping[{tick_id('ping', clock.now - 0.5)}]" in line and "skipped" in line
    assert app.AsyncResult(tick_id("ping", clock.now - 0.5)).state == "PENDING"  # none stored


def test_a_redelivered_or_replayed_tick_runs_again(app: Celeriac, clock: Clock) -> None:
    """The fence stops only a second *send*: a redelivery of the same send (its worker
    died) and a dead letter replayed by hand run, as every other task's would."""
    runs: list[str] = []
    app.beat.periodic(
        app.task(lambda: runs.append("ran"), name="t.ping", ignore_result=True),
        every=60,
        name="ping",
    )
    Scheduler(app, clock=clock).step()
    executor = Executor(app, "doomed")

    def start() -> Delivery:
        (delivery,) = app.broker.fetch(["default"], "doomed", limit=1, lease_seconds=30, timeout=0)
        job, skip = executor.prepare(delivery)
        assert skip is None, "the fence stopped the same send"
        executor.execute(job)
        return delivery

    app.broker.requeue(start().lease)  # its worker died before settling
    poisoned = start()  # the redelivery runs; then it is dead-lettered
    letter = DeadLetter(
        id=poisoned.id,
        queue=poisoned.queue,
        task="t.ping",
        reason="poisoned in a test",
        body=poisoned.body,
        deliveries=poisoned.deliveries,
        error="",
        dead_at=time.time(),
    )
    assert app.broker.dead_letter(poisoned.lease, letter, None)
    assert app.replay_dead_letters([poisoned.id]) == 1
    assert run_queued(app) == 1
    assert runs == ["ran", "ran", "ran"]


# -- missed ticks ----------------------------------------------------------------------------


def _downtime(app: Celeriac, clock: Clock, missed: str) -> tuple[Scheduler, float]:
    """A 60-s entry runs once; then every scheduler is down for ten minutes and a bit."""
    app.beat.periodic(
        app.task(lambda: None, name="t.report"), every=60, name="report", missed=missed
    )
    before = Scheduler(app, clock=clock)
    before.step()  # first seen at a fire time: that tick is sent
    assert len(queued(app)) == 1
    clock.now += 600 + 40  # ten ticks missed; the latest is 40 s late (grace is 30 s)
    return Scheduler(app, clock=clock), clock.now - 40


def test_missed_ticks_are_skipped_by_default(app: Celeriac, clock: Clock) -> None:
    after, latest = _downtime(app, clock, "skip")
    after.step()
    assert queued(app) == []
    clock.now = latest + 60
    after.step()
    assert [m.id for m in queued(app)] == [tick_id("report", latest + 60)]


def test_run_once_sends_only_the_latest_missed_tick(app: Celeriac, clock: Clock) -> None:
    after, latest = _downtime(app, clock, "run_once")
    other = Scheduler(app, clock=clock)  # two schedulers recover: still one catch-up
    after.step()
    other.step()
    (message,) = queued(app)
    assert message.id == tick_id("report", latest)
    assert message.expires == latest + 60  # it never runs after the next tick is due
    clock.now += 5
    after.step()
    assert queued(app) == []  # no burst: the other nine missed ticks never run


def test_a_slightly_late_tick_is_still_sent(app: Celeriac, clock: Clock) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.report"), every=60, name="report")
    scheduler = Scheduler(app, clock=clock)
    start = clock.now
    scheduler.step()
    clock.now += 60 + 10  # within the grace: a slow pass, not a missed tick
    scheduler.step()
    assert sorted(m.id for m in queued(app)) == [tick_id("report", start + s) for s in (0, 60)]


def test_a_new_entry_does_not_catch_up_on_ticks_before_it_existed(
    app: Celeriac, clock: Clock
) -> None:
    app.beat.periodic(
        app.task(lambda: None, name="t.nightly"), cron="0 3 * * *", name="n", missed="run_once"
    )
    clock.now += 30  # never exactly 03:00:00
    Scheduler(app, clock=clock).step()
    assert queued(app) == []


# -- run-time changes -----------------------------------------------------------------------


def test_entries_added_paused_resumed_and_removed_at_run_time(app: Celeriac, clock: Clock) -> None:
    t0 = clock.now
    scheduler = Scheduler(app, clock=clock)  # running before anything is added
    scheduler.step()
    app.beat.add("ping", "t.ping", every=60, args=[1], queue="pings")
    app.beat.add("held", "t.held", every=60, paused=True)
    clock.now = t0 + 60
    scheduler.step()
    assert [(m.id, m.args, m.queue) for m in queued(app)] == [
        (tick_id("ping", t0 + 60), [1], "pings")
    ]
    app.beat.pause("ping")
    clock.now = t0 + 120
    scheduler.step()
    assert queued(app) == []
    clock.now = t0 + 130
    app.beat.resume("ping")
    app.beat.resume("held")
    scheduler.step()
    assert queued(app) == []  # resumed entries start from their next tick: no catch-up
    clock.now = t0 + 180
    scheduler.step()
    assert sorted(m.task for m in queued(app)) == ["t.held", "t.ping"]
    app.beat.change("ping", every=120, args=[2])
    assert app.beat.get("ping").schedule == "every 2m"
    assert app.beat.remove("ping") == "removed ping"
    clock.now = t0 + 240
    scheduler.step()
    assert [m.task for m in queued(app)] == ["t.held"]
    assert [e.name for e in app.beat.entries()] == ["held"]
    with pytest.raises(UnknownEntry, match="no periodic entry 'ping'"):
        app.beat.pause("ping")
    with pytest.raises(ConfigurationError, match="exists"):
        app.beat.add("held", "t.held", every=5)


def test_an_entry_from_code_can_be_changed_paused_and_reverted(app: Celeriac) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.report"), every=60, name="report")
    with pytest.raises(ConfigurationError, match="defined in code"):
        app.beat.remove("report")
    app.beat.change("report", cron="0 3 * * *", tz="Europe/Kyiv")
    app.beat.pause("report")
    info = app.beat.get("report")
    assert (info.origin, info.schedule, info.paused) == (
        "changed",
        "cron 0 3 * * * (Europe/Kyiv)",
        True,
    )
    assert "applies again" in app.beat.remove("report")
    info = app.beat.get("report")
    assert (info.origin, info.schedule, info.paused) == ("code", "every 1m", True)


def test_another_process_sees_entries_and_their_state(clock: Clock) -> None:
    broker = MemoryBroker()
    scheduling = Celeriac("scheduling", broker="memory://")
    scheduling.use_broker(broker)
    scheduling.beat.periodic(scheduling.task(lambda: None, name="t.ping"), every=60, name="ping")
    Scheduler(scheduling, clock=clock).step()
    clock.now += 60
    Scheduler(scheduling, clock=clock).step()
    admin = Celeriac("admin", broker="memory://")  # without the code that defines "ping"
    admin.use_broker(broker)
    (info,) = admin.beat.entries()
    assert (info.name, info.origin, info.schedule) == ("ping", "elsewhere", "every 1m")
    assert info.last_run == clock.now and info.next_run == clock.now + 60
    assert info.last_task_id == tick_id("ping", clock.now) and info.last_state == "PENDING"
    # Deleted from the admin's view (say, after it left the code): forgotten here...
    assert "removed ping from the list" in admin.beat.remove("ping")
    assert admin.beat.entries() == []
    # ...but a scheduler whose code still has it lists it again, and keeps its ticks going.
    scheduler = Scheduler(scheduling, clock=clock)
    clock.now += 30
    scheduler.step()
    clock.now += 30
    scheduler.step()
    assert [e.name for e in admin.beat.entries()] == ["ping"]
    assert admin.beat.get("ping").last_run == clock.now


# -- operations ------------------------------------------------------------------------------


def test_log_lines_say_what_was_sent_and_when(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.ping"), cron="* * * * *", name="ping")
    scheduler = Scheduler(app, clock=clock, ident="host:1")
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        scheduler.step()
        clock.now += 60
        scheduler.step()
    when = dt.datetime.fromtimestamp(clock.now, UTC).strftime("%H:%M:%S UTC")  # date: today
    assert (
        f"beat: sent tick of ping for {when} as task {tick_id('ping', clock.now)}"
        in caplog.messages
    )
    assert "beat: scheduling 1 entry: ping (cron * * * * * (UTC))" in caplog.messages


def test_an_unreachable_broker_is_logged_once_and_retried(
    app: Celeriac, clock: Clock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.beat.periodic(app.task(lambda: None, name="t.ping"), every=1, name="ping")
    scheduler = Scheduler(app, clock=clock)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerConnectionError("connection refused")

    monkeypatch.setattr(app.broker, "join_values", down)
    with caplog.at_level(logging.INFO, logger="celeriac.beat"):
        assert scheduler.step() == pytest.approx(1.0)
        assert scheduler.step() == pytest.approx(1.0)
        monkeypatch.undo()
        scheduler.step()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "broker unreachable" in warnings[0].message
    assert "beat: the broker is reachable again" in caplog.messages


# -- the command line ------------------------------------------------------------------------


def beat_cli(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["-b", url, "beat", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_add_list_pause_resume_remove(sqlite_url: str) -> None:
    code, output = beat_cli(
        sqlite_url,
        *("add", "nightly", "shop.report", "--cron", "0 3 * * *", "--tz", "Europe/Kyiv"),
        *("--args", "[7]", "--queue", "reports", "--missed", "run_once"),
    )
    assert code == 0 and output.startswith("added nightly: shop.report cron 0 3 * * *")
    assert beat_cli(sqlite_url, "add", "ping", "shop.ping", "--every", "5m")[0] == 0
    code, output = beat_cli(sqlite_url, "list", "--json")
    listed = {e["name"]: e for e in json.loads(output)}
    assert listed["nightly"]["schedule"] == "cron 0 3 * * * (Europe/Kyiv)"
    assert listed["nightly"]["args"] == [7] and listed["nightly"]["missed"] == "run_once"
    assert listed["nightly"]["options"] == {"queue": "reports"}
    assert listed["ping"]["schedule"] == "every 5m" and listed["ping"]["next_run"]
    assert beat_cli(sqlite_url, "pause", "ping") == (0, "paused ping\n")
    code, output = beat_cli(sqlite_url, "list")
    assert code == 0 and "nightly" in output and "paused" in output
    # Two lines an entry, whole at 80 columns (a seven-column table folded every date).
    lines = output.splitlines()
    (first,) = [n for n, line in enumerate(lines) if line.startswith("nightly  ")]
    assert lines[first].startswith("nightly  cron 0 3 * * * (Europe/Kyiv)  active")
    assert lines[first + 1].startswith("    task shop.report, next 20")
    assert "ping  every 5m  paused" in output
    assert beat_cli(sqlite_url, "resume", "ping") == (0, "resumed ping\n")
    assert beat_cli(sqlite_url, "remove", "ping") == (0, "removed ping\n")
    code, output = beat_cli(sqlite_url, "pause", "ping")
    assert code == 1 and "no periodic entry 'ping'" in output and "Traceback" not in output


def test_cli_errors_are_one_line(sqlite_url: str) -> None:
    code, output = beat_cli(sqlite_url, "add", "x", "t", "--cron", "61 * * * *")
    assert code == 1 and "not a valid five-field cron" in output
    code, output = beat_cli(sqlite_url, "add", "x", "t")
    assert code == 2 and "exactly one of --cron" in output
    code, output = beat_cli(sqlite_url, "add", "x", "t", "--every", "soon")
    assert code == 2 and "use seconds or N with s, m, h or d" in output
    code, output = beat_cli(sqlite_url)
    assert code == 1 and "pass -A MODULE" in output
    code, output = beat_cli(sqlite_url, "list")
    first, note = output.splitlines()
    assert code == 0
    assert first == "no periodic entries (define them with @app.periodic or celeriac beat add)"
    # The file did not exist: run from another folder than the scheduler's, `beat list`
    # made an empty one and said only "no periodic entries".
    assert note.startswith("note: broker.db did not exist in ") and "created it, empty" in note
    assert beat_cli(sqlite_url, "list") == (  # once: the file is there now
        0,
        "no periodic entries (define them with @app.periodic or celeriac beat add)\n",
    )


def test_cli_add_checks_the_task_when_it_loads_its_code(sqlite_url: str) -> None:
    def add(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            cli, ["-A", "tests.apps.core", "-b", sqlite_url, "beat", "add", *args]
        )
        return result.exit_code, result.output

    code, output = add("sum", "tests.apps.core.add", "--every", "5m", "--args", "[1]")
    assert code == 1 and "missing a required argument: 'y'" in output
    code, output = add("typo", "tests.apps.core.ad", "--every", "5m")
    said = " ".join(output.split())  # rich wraps the warning to the terminal's width
    assert code == 0 and "no task 'tests.apps.core.ad' is registered in tests.apps.core" in said
    assert "(did you mean 'tests.apps.core.add'?)" in said
    code, output = add("styled", "x[red]y", "--every", "5m")  # the name is text, not markup
    assert code == 0 and "no task 'x[red]y' is registered" in " ".join(output.split())
    code, output = add("sum", "tests.apps.core.add", "--every", "5m", "--args", "[1, 2]")
    assert code == 0 and "warning" not in output


def test_the_example_lists_its_entries(tmp_path: Path) -> None:
    example = ROOT / "examples" / "periodic"
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "beat", "list", "--json"],
        cwd=example,
        env={**os.environ, "CELERIAC_BROKER_URL": f"sqlite:///{tmp_path}/example.db"},
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = {e["name"]: e["schedule"] for e in json.loads(done.stdout)}
    assert listed == {
        "heartbeat-every-30s": "every 30s",
        "weekday-digest": "cron 0 9 * * 1-5 (America/New_York)",
        "month-closed": "cron 0 6 1 * * (UTC)",
        "tasks.refresh_rates": "every 10s",
        "tasks.nightly_report": "cron 0 3 * * * (Europe/Kyiv)",
    }


def test_a_scheduler_process_stopped_right_after_its_fork_exits_cleanly(tmp_path: Path) -> None:
    # A SIGTERM before the forked child installed its handlers killed it by the default
    # action (exit code -15), or ran the parent's handler in it.
    from celeriac.beat.process import fork_scheduler, stop_scheduler

    app = Celeriac("fork-beat", broker=f"sqlite:///{tmp_path}/broker.db")
    try:
        codes = [stop_scheduler(fork_scheduler(app)) for _ in range(5)]
    finally:
        app.broker.close()
    assert codes == [0] * 5
