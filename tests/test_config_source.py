"""app.config_from_object: settings from a celeryconfig-style module, a class, a dict, or
Django-style settings under a namespace."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from celeriac import Celeriac, ConfigurationError


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Celeriac:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    return Celeriac("config-source", broker="memory://")


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_celeryconfig_module_sets_its_lowercase_names_and_nothing_else(
    app: Celeriac, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module(
        tmp_path,
        monkeypatch,
        "shop_celeriac_config",
        """
        from __future__ import annotations
        import os
        from datetime import timedelta

        broker_url = "sqlite:///" + os.path.join("var", "shop.db")
        task_soft_time_limit = 60
        task_default_queue = "shop"
        MAX_ROWS = 500  # a constant of the project's: not a setting

        def helper() -> None: ...
        """,
    )
    app.config_from_object("shop_celeriac_config")
    assert app.conf.broker_url == "sqlite:///var/shop.db"
    assert app.conf.task_soft_time_limit == 60.0
    assert app.conf.task_default_queue == "shop"


def test_django_style_settings_are_read_under_their_namespace(
    app: Celeriac, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module(
        tmp_path,
        monkeypatch,
        "shop_django_conf",
        """
        class settings:
            DEBUG = True
            DATABASES = {"default": {}}
            CELERY_BROKER_URL = "redis://cache:6379/1"
            CELERY_TASK_TIME_LIMIT = "90"
            CELERY_IMPORTS = ["json"]
        """,
    )
    app.config_from_object("shop_django_conf:settings", namespace="CELERY")
    assert app.conf.broker_url == "redis://cache:6379/1"
    assert app.conf.task_time_limit == 90.0  # converted as CELERIAC_* variables are
    assert app.conf.imports == ["json"]
    assert app.conf.task_default_queue == "default"


def test_read_without_its_namespace_django_settings_say_what_is_missing(
    app: Celeriac,
) -> None:
    class Settings:
        DEBUG = True
        CELERY_BROKER_URL = "redis://cache:6379/1"

    with pytest.raises(ConfigurationError) as caught:
        app.config_from_object(Settings)
    assert str(caught.value) == (
        "config_from_object('test_read_without_its_namespace_django_settings_say_what_is_"
        "missing.<locals>.Settings'): found no lowercase name holding a value (broker_url = "
        "...); for Django's settings, add namespace='CELERY' or the one yours use"
    )
    with pytest.raises(ConfigurationError, match=r"found no name starting with CELERIAC_$"):
        app.config_from_object(Settings, namespace="CELERIAC")


def test_a_name_that_is_no_setting_is_refused_with_what_to_do(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError) as caught:
        app.config_from_object(
            {"CELERY_RESULT_BACKEND": "redis://cache:6379/2"}, namespace="CELERY"
        )
    said = str(caught.value)
    assert said.startswith("config_from_object('dict'), CELERY_RESULT_BACKEND: unknown setting ")
    assert "it is Celery's" in said and "results are stored in the broker" in said

    with pytest.raises(ConfigurationError, match="Did you mean 'task_soft_time_limit'"):
        app.config_from_object({"task_soft_time_limt": 60})


def test_every_name_that_cannot_be_used_is_said_at_once(app: Celeriac) -> None:
    # Django settings written for Celery: one error per run meant a restart per name.
    class DjangoSettings:
        CELERY_BROKER_URL = "memory://"
        CELERY_RESULT_BACKEND = "django-db"
        CELERY_TASK_TIME_LIMIT = "1800"
        CELERY_TIMEZONE = "Europe/Kyiv"
        CELERY_WORKER_CONCURRENCY = 0

    with pytest.raises(ConfigurationError) as caught:
        app.config_from_object(DjangoSettings, namespace="CELERY")
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("DjangoSettings'): 3 names cannot be used:")
    assert [line.split(":")[0] for line in lines[1:4]] == [
        "  CELERY_RESULT_BACKEND",
        "  CELERY_TIMEZONE",
        "  CELERY_WORKER_CONCURRENCY",
    ]
    assert lines[4].startswith("While Celery reads the CELERY_* names too (a move in progress)")
    assert app.conf.task_time_limit == 1800.0  # the names that could be used were


def test_a_bad_value_names_the_name_it_came_from(app: Celeriac) -> None:
    class Config:
        worker_concurrency = 0

    with pytest.raises(ConfigurationError) as caught:
        app.config_from_object(Config)
    assert str(caught.value) == (
        "config_from_object('test_a_bad_value_names_the_name_it_came_from.<locals>.Config'), "
        "worker_concurrency: setting worker_concurrency must be between 1 and 10000, got 0"
    )


def test_a_source_that_cannot_be_imported_says_which_part_is_missing(
    app: Celeriac, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match=r"\('no_such_config'\): no module named"):
        app.config_from_object("no_such_config")
    _module(tmp_path, monkeypatch, "shop_conf_two", "broker_url = 'memory://'\n")
    with pytest.raises(ConfigurationError, match="module 'shop_conf_two' has no 'settings'"):
        app.config_from_object("shop_conf_two:settings")
    _module(tmp_path, monkeypatch, "shop_conf_broken", "import no_such_dependency\n")
    with pytest.raises(
        ConfigurationError, match="importing it failed: No module named 'no_such_dependency'"
    ):
        app.config_from_object("shop_conf_broken")


def test_the_environment_still_chooses_the_broker(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "memory://")
    app.config_from_object({"broker_url": "redis://prod:6379/0", "task_default_queue": "shop"})
    assert app.conf.broker_url == "memory://"  # as over Celeriac(broker=...)
    assert app.conf.task_default_queue == "shop"
