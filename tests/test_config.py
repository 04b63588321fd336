"""Settings: defaults, environment overrides, conversion and typos."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac import UNBOUNDED, Celeriac, ConfigurationError
from celeriac.config import Settings


def test_safe_defaults_bound_every_task() -> None:
    s = Settings()
    assert s.task_soft_time_limit < s.task_time_limit
    assert s.task_expires > 0
    assert s.worker_max_memory_per_child


def test_environment_overrides_defaults() -> None:
    s = Settings.from_environment(
        {
            "CELERIAC_TASK_SOFT_TIME_LIMIT": "12.5",
            "CELERIAC_TASK_TRACK_STARTED": "yes",
            "CELERIAC_WORKER_MAX_TASKS_PER_CHILD": "none",
            "UNRELATED": "1",
        }
    )
    assert s.task_soft_time_limit == 12.5
    assert s.task_track_started is True
    assert s.worker_max_tasks_per_child is None


def test_unknown_setting_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'task_soft_time_limit'"):
        Celeriac("x", broker="memory://", task_soft_timelimit=3)
    app = Celeriac("x", broker="memory://")
    with pytest.raises(ConfigurationError, match="worker_prefetch_multiplier"):
        app.conf.worker_prefetch_multiplyer = 2


def test_wrong_type_is_refused_with_the_setting_name() -> None:
    app = Celeriac("x", broker="memory://")
    with pytest.raises(ConfigurationError, match="task_time_limit must be float"):
        app.conf.task_time_limit = "soon"
    with pytest.raises(ConfigurationError, match="task_track_started must be bool"):
        app.conf.update(task_track_started="maybe")


def test_values_out_of_range_are_refused_with_the_range() -> None:
    app = Celeriac("x", broker="memory://")
    with pytest.raises(ConfigurationError, match="worker_concurrency must be between 1 and"):
        app.conf.worker_concurrency = -3  # a worker with no children at all
    with pytest.raises(ConfigurationError, match="worker_lease_seconds must be over 0"):
        app.conf.worker_lease_seconds = 0
    with pytest.raises(ConfigurationError, match="task_default_priority must be between 0 and 9"):
        app.conf.task_default_priority = 10
    app.conf.update(worker_max_tasks_per_child=None, task_time_limit=UNBOUNDED)  # no limit
    app.conf.update(worker_max_memory_per_child=0, worker_prefetch_multiplier=0)  # Celery's "off"


def test_environment_mistakes_name_the_variable(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(
        ConfigurationError, match=r"variable CELERIAC_WORKER_CONCURRENCY: .* must be int"
    ):
        Settings.from_environment({"CELERIAC_WORKER_CONCURRENCY": "abc"})
    with pytest.raises(
        ConfigurationError, match=r"CONCURRENCY: setting worker_concurrency must be between 1"
    ):
        Settings.from_environment({"CELERIAC_WORKER_CONCURRENCY": "0"})
    settings = Settings.from_environment(
        {"CELERIAC_TASK_SOFT_TIME_LIMT": "5", "CELERIAC_TEST_LEDGER": "/tmp/x"}
    )
    assert settings.task_soft_time_limit == 300.0  # the typo changed nothing...
    assert "did you mean CELERIAC_TASK_SOFT_TIME_LIMIT?" in caplog.text  # ...and says so
    assert "CELERIAC_TEST_LEDGER" not in caplog.text  # not near any setting: not ours


def test_a_serializer_no_codec_has_is_refused_where_it_is_set() -> None:
    # Found at each message: a worker started, then dead-lettered every message it read as
    # malformed, telling to fix the producer.
    with pytest.raises(ConfigurationError, match=r"SERIALIZER: setting task_serializer: 'yaml' is"):
        Settings.from_environment({"CELERIAC_TASK_SERIALIZER": "yaml"})
    with pytest.raises(ConfigurationError, match=r"accept_content: 'yml' is no serializer; use"):
        Settings.from_environment({"CELERIAC_ACCEPT_CONTENT": '["json", "yml"]'})
    assert Settings(task_serializer="msgpack", accept_content=["msgpack"]).accept_content


def test_broker_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Celeriac("x").conf.broker_url == "sqlite:///celeriac.db"
    assert Celeriac("x", broker="memory://").conf.broker_url == "memory://"
    monkeypatch.setenv("CELERIAC_BROKER_URL", "sqlite:///other.db")
    assert Celeriac("x", broker="memory://").conf.broker_url == "sqlite:///other.db"


def test_unknown_broker_scheme_is_a_clear_error() -> None:
    app = Celeriac("x", broker="amqp://localhost")
    with pytest.raises(ConfigurationError, match="unknown broker URL 'amqp://localhost'"):
        _ = app.broker


def test_an_empty_broker_url_says_it_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    # broker=os.environ.get("REDIS_URL", "") with REDIS_URL unset: "unknown broker URL ''".
    with pytest.raises(ConfigurationError, match=r"^the broker URL is empty \(''\): an unset"):
        _ = Celeriac("x", broker="").broker
    monkeypatch.setenv("CELERIAC_BROKER_URL", " ")
    with pytest.raises(ConfigurationError, match="CELERIAC_BROKER_URL set to nothing"):
        _ = Celeriac("x", broker="memory://").broker


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("amqp://guest:pw@localhost//", "does not speak AMQP"),
        ("sqs://", "SQS broker is not built yet"),
        ("sentinel://:pw@localhost:26379", "give the URL of the current master"),
        ("redis+sentinel://localhost:26379/mymaster", "Sentinel is not supported"),
        ("kafka://localhost", "Use one of: memory://"),
    ],
)
def test_a_scheme_from_another_queue_says_what_to_use(url: str, said: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown broker URL") as caught:
        _ = Celeriac("x", broker=url).broker
    assert said in str(caught.value) and "pw" not in str(caught.value)


def test_sqlite_url_mistakes_are_clear_errors(tmp_path: Path) -> None:
    from celeriac.brokers.sqlite import SQLiteBroker

    with pytest.raises(ConfigurationError, match=r"in-memory database.*Use memory://"):
        SQLiteBroker("sqlite:///:memory:")  # made a file named ":memory:"

    with pytest.raises(ConfigurationError, match=r"unknown option 'synchronus'.*synchronous="):
        SQLiteBroker(f"sqlite:///{tmp_path}/b.db?synchronus=full")
    with pytest.raises(ConfigurationError, match=r"synchronous=sometimes .*use normal, full"):
        SQLiteBroker(f"sqlite:///{tmp_path}/b.db?synchronous=sometimes")
    with pytest.raises(ConfigurationError, match="no file in SQLite URL"):
        SQLiteBroker("sqlite:///")
    with pytest.raises(ConfigurationError, match=r"folder .* does not exist.*mkdir -p"):
        SQLiteBroker(f"sqlite:///{tmp_path}/typo/b.db")  # was: created, an empty broker
    assert not (tmp_path / "typo").exists()
    SQLiteBroker(f"sqlite:///{tmp_path}/b.db?synchronous=full").close()


def test_a_named_limit_whose_rate_cannot_be_read_is_refused_when_set() -> None:
    # It was accepted, and every task using it failed in the worker, message after message.
    for rate in ("10/x", "0/s", "-1/m"):
        with pytest.raises(ConfigurationError, match="setting limits: 'smtp': rate limit"):
            Settings(limits={"smtp": rate})
    with pytest.raises(ConfigurationError, match="CELERIAC_LIMITS"):
        Settings.from_environment({"CELERIAC_LIMITS": '{"smtp": "ten per second"}'})
    assert Settings(limits={"smtp": "10/s"}).limits == {"smtp": "10/s"}


def test_a_three_slash_url_meant_as_absolute_says_to_write_four(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sqlite:///tmp/x.db is tmp/x.db under the working directory: the error named a folder
    # that does not exist, and not why the path was not the one written.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    absolute = tmp_path / "elsewhere" / "c.db"
    with pytest.raises(ConfigurationError) as caught:
        _ = Celeriac("x", broker=f"sqlite://{absolute}").broker  # three slashes
    assert f"for {absolute} write four: sqlite:///{absolute})" in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "value", "advice"),
    [
        ("result_backend", "redis://localhost/1", "results are stored in the broker"),
        ("backend", "redis://localhost/1", "results are stored in the broker"),
        ("task_acks_late", True, "a message is always acked after its task ends"),
        ("task_queues", ["shop"], "route with task_routes, or queue= on @app.task"),
        ("timezone", "Europe/Paris", "beat_timezone is the zone of cron entries"),
        ("broker_transport_options", {"visibility_timeout": 60}, "worker_lease_seconds"),
        ("broker_connection_retry_on_startup", True, "workers reconnect with backoff"),
        ("result_serializer", "json", "results are stored as JSON, whatever task_serializer"),
    ],
)
def test_a_celery_setting_says_what_to_set_instead(
    setting: str, value: object, advice: str
) -> None:
    # A Celery config carried over said "unknown setting", and task_acks_late was met with
    # "Did you mean 'task_track_started'?", a setting that does something else.
    for give in (
        lambda: Celeriac("x", broker="memory://", **{setting: value}),
        lambda: Settings().update(**{setting: value}),
    ):
        with pytest.raises(ConfigurationError) as caught:
            give()
        said = str(caught.value)
        assert said.startswith(f"unknown setting {setting!r}: it is Celery's; ") and advice in said
        assert "Did you mean" not in said


@pytest.mark.parametrize(
    ("spelt", "setting"),
    [
        ("CELERY_BROKER_URL", "broker_url"),  # a Django settings module's
        ("BROKER_URL", "broker_url"),  # Celery 3's
        ("CELERYD_CONCURRENCY", "worker_concurrency"),
        ("CELERYBEAT_SCHEDULE", "beat_schedule"),
    ],
)
def test_celerys_spellings_of_a_setting_name_it(spelt: str, setting: str) -> None:
    # app.conf.CELERY_BROKER_URL = ... said "unknown setting" with no hint.
    with pytest.raises(ConfigurationError) as caught:
        Settings().update(**{spelt: "x"})
    said = str(caught.value)
    assert f"set {setting!r}, or in the environment CELERIAC_{setting.upper()}" in said, said


def test_celerys_environment_variable_is_said_not_read(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deployment carried over from Celery kept CELERY_BROKER_URL: every process used a
    # SQLite file of its own, without a word.
    from celeriac import config

    monkeypatch.setattr(config, "_CELERYS_SAID", set())
    settings = Settings.from_environment({"CELERY_BROKER_URL": "redis://broker:6379/0"})
    Settings.from_environment({"CELERY_BROKER_URL": "redis://broker:6379/0"})
    assert caplog.text.count("CELERY_BROKER_URL is Celery's") == 1  # once per process
    assert settings.broker_url == "sqlite:///celeriac.db"
    assert "environment variable CELERY_BROKER_URL is Celery's" in caplog.text
    assert "set CELERIAC_BROKER_URL instead" in caplog.text
    caplog.clear()
    both = {"CELERY_BROKER_URL": "redis://a/0", "CELERIAC_BROKER_URL": "redis://b/0"}
    assert Settings.from_environment(both).broker_url == "redis://b/0"
    assert caplog.text == ""  # celeriac's own is set: nothing to say


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("visibility_timeout=3600", "a lease's length is the worker_lease_seconds setting"),
        ("global_keyprefix=app", "use prefix="),
    ],
)
def test_celerys_redis_url_options_say_what_to_use(option: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Celeriac("x", broker=f"redis://localhost:6379/0?{option}").broker  # noqa: B018
    assert f"it is Celery's; {said}" in str(caught.value)
