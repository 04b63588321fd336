"""Settings: typed, with Celery's names where a Celery user would look for them.

Precedence, lowest first: the defaults below, ``CELERIAC_<NAME>`` environment variables
(``CELERIAC_BROKER_URL``, ``CELERIAC_TASK_SOFT_TIME_LIMIT``...), then keyword arguments to
``Celeriac(...)``, then assignments to ``app.conf`` at run time.

Safe by default: every task gets a soft limit, a hard limit and an expiry from here unless
it sets its own; children recycle before they grow past a memory ceiling.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import types
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from celeriac.celery_names import SETTINGS
from celeriac.errors import ConfigurationError
from celeriac.options import queue_name_problem
from celeriac.routes import Routes, frozen, names_a_router
from celeriac.text import cut


@dataclasses.dataclass
class Settings:
    """Every setting, its default, and what it is for.

    Example:
        >>> s = Settings()
        >>> s.update(task_soft_time_limit=60)
        >>> s.task_soft_time_limit
        60.0
    """

    broker_url: str = "sqlite:///celeriac.db"
    task_default_queue: str = "default"
    task_default_priority: int = 0  # 0..9, higher runs first
    # Task name or glob -> queue (or {"queue", "priority"}); see celeriac.routes.
    task_routes: dict[Any, Any] | list[Any] | tuple[Any, ...] = dataclasses.field(
        default_factory=dict
    )
    task_soft_time_limit: float = 300.0  # seconds; SoftTimeLimitExceeded inside the task
    task_time_limit: float = 360.0  # seconds; the child is stopped, the task fails
    task_expires: float = 86_400.0  # seconds after sending; an unstarted task then EXPIRES
    task_max_deliveries: int = 5  # hand-outs (crashes included) before dead-lettering
    task_track_started: bool = False  # store STARTED (costs one broker write per task)
    task_ignore_result: bool = False
    task_always_eager: bool = False  # sends run the task in the caller (tests; run_queued)
    task_payload_warn_bytes: int = 16 * 1024
    task_payload_max_bytes: int = 256 * 1024
    task_result_max_bytes: int = 16 * 1024 * 1024  # a bigger result is stored as FAILURE
    task_unknown_retry_delay: float = 10.0  # seconds before an unknown task is offered again
    task_unknown_max_age: float = 3600.0  # then an unknown task is dead-lettered
    task_strict_kwargs: bool = False  # fail, instead of dropping, unknown keyword arguments
    result_expires: float = 86_400.0  # seconds a result is kept
    # Left unset, `celeriac worker` runs as many as the CPUs it may use (a container's CPU
    # limit, its CPU affinity: celeriac.worker.cpus); this default counts the host's.
    worker_concurrency: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 2)
    # Messages a consumer takes per free slot. Above 1, a priority-9 task may wait for
    # up to this many - 1 low-priority tasks per consumer (-P asyncio: not used).
    worker_prefetch_multiplier: int = 1
    # Short tasks: a consumer takes and commits up to worker_batch_max per broker call,
    # sized so a batch runs in about worker_batch_window seconds (commits wait at most
    # that long); tasks longer than the window go one by one. 1 turns batching off.
    worker_batch_max: int = 64
    worker_batch_window: float = 0.005
    # MiB of RSS; the child then recycles. Left at its default, the worker fits it to the
    # container's (or host's) memory: at most 1024, less when -c children would not fit.
    worker_max_memory_per_child: int | None = 1024
    # Tasks a child runs before it recycles; a message put back unrun (a rate limit's
    # deferral) is not counted.
    worker_max_tasks_per_child: int | None = None
    worker_lease_seconds: float = 30.0  # renewed every third of it while a task runs
    worker_heartbeat_seconds: float = 2.0  # a worker is dead after 5 missed heartbeats
    worker_log_level: str = "INFO"
    beat_schedule: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> entry
    beat_timezone: str = "UTC"  # zone of cron entries that do not name one
    beat_max_interval: float = 1.0  # seconds between looks at the broker for run-time changes
    beat_missed_after: float = 30.0  # a tick this late (at most half its interval) was missed
    limits: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> "10/s"
    task_serializer: str = "json"  # json | msgpack | pickle
    accept_content: list[str] = dataclasses.field(default_factory=lambda: ["json", "msgpack"])
    task_signing_key: str | list[str] | None = None  # first signs; all verify (rotation)
    worker_send_task_events: bool = True  # batched into a bounded stream; see `celeriac events`
    worker_send_started_events: bool = False  # also "received" and "started" per task
    # Modules that define tasks, imported by every `celeriac -A` command after the app's
    # module: a worker knows only the tasks of modules it imported (Celery's imports).
    imports: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        # The names a person chose (a keyword, a CELERIAC_* variable, an assignment), as
        # opposed to defaults: the worker fits some defaults to the machine, never a choice.
        # Settings(name=...) keywords pass __setattr__ before this; those that differ from
        # the default are the ones that can be told apart.
        chosen = {
            f.name
            for f in dataclasses.fields(self)
            if f.default is not dataclasses.MISSING and getattr(self, f.name) != f.default
        }
        object.__setattr__(self, "_chosen", chosen)

    #: ``task_routes`` as sends read it (None when it routes nothing), made each time the
    #: setting is set; not a setting itself. ``Settings(task_routes={"shop.*": "shop"})
    #: .routing.lookup("shop.charge")`` is ``{'queue': 'shop'}``.
    routing: ClassVar[Routes | None] = None

    def was_set(self, name: str) -> bool:
        """True when setting ``name`` was chosen (by a keyword argument, a ``CELERIAC_*``
        environment variable or an assignment), False while it holds its default.

        Example:
            >>> s = Settings()
            >>> s.was_set("worker_max_memory_per_child")
            False
            >>> s.worker_max_memory_per_child = 1024  # the default's value, but chosen
            >>> s.was_set("worker_max_memory_per_child")
            True
        """
        if name not in _hints():
            raise ConfigurationError(_unknown(name))
        return name in self.__dict__.get("_chosen", ())

    def update(self, **values: Any) -> None:
        """Set several settings, converting and checking each one."""
        for name, value in values.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        hints = _hints()
        if name not in hints:
            raise ConfigurationError(_unknown(name))
        if name == "task_routes":
            # Read once here, so a bad route fails where it is set, and sends look up a
            # ready table (``routing``).
            value, routing = _read_routes(value)
            object.__setattr__(self, "routing", routing)
            super().__setattr__(name, value)
            self._choose(name)
            return
        value = _coerce(name, hints[name], value)
        if isinstance(value, list):
            _check_items(name, hints[name], value)
        _check_bounds(name, value)
        _check_text(name, value)
        if name == "limits" and value:
            _check_limits(value)
        if name == "imports":
            check_import_names(value)
        super().__setattr__(name, value)
        self._choose(name)

    def _choose(self, name: str) -> None:
        chosen = self.__dict__.get("_chosen")
        if chosen is not None:  # None while the dataclass's __init__ assigns the defaults
            chosen.add(name)

    def as_dict(self) -> dict[str, Any]:
        """Every setting and its current value."""
        return dataclasses.asdict(self)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Settings:
        """Defaults overridden by ``CELERIAC_*`` environment variables."""
        environ = dict(os.environ if environ is None else environ)
        settings = cls()
        for key, raw in environ.items():
            if not key.startswith("CELERIAC_"):
                _warn_if_celerys(key, environ)
                continue
            name = key[len("CELERIAC_") :].lower()
            if name not in _hints():
                _warn_if_misspelt(key, name)
                continue
            try:
                setattr(settings, name, raw)
            except ConfigurationError as exc:
                raise ConfigurationError(f"environment variable {key}: {exc}") from None
        return settings


_HINTS: dict[str, Any] = {}

#: The smallest (and largest) value a numeric setting may take; None is always allowed
#: where the setting is optional. A worker with -3 children or a lease of 0 s is a mistake.
_BOUNDS: dict[str, tuple[float, float]] = {
    "task_default_priority": (0, 9),
    "task_max_deliveries": (1, math.inf),
    "worker_concurrency": (1, 10_000),
    "worker_prefetch_multiplier": (0, math.inf),  # 0 acts as 1
    "worker_batch_max": (0, math.inf),  # 0 acts as 1: no batching
    "worker_batch_window": (0, math.inf),
    "worker_max_memory_per_child": (0, math.inf),  # 0, as None: no ceiling (as in Celery)
    "worker_max_tasks_per_child": (0, math.inf),  # 0, as None: no recycling by count
    "task_payload_warn_bytes": (1, math.inf),
    "task_payload_max_bytes": (1, math.inf),
    "task_result_max_bytes": (1, math.inf),
    "task_unknown_retry_delay": (0, math.inf),
    "task_unknown_max_age": (0, math.inf),
}
#: Durations that must be over zero (math.inf: no limit, where the setting allows it).
_POSITIVE = frozenset(
    {
        "task_soft_time_limit",
        "task_time_limit",
        "task_expires",
        "result_expires",
        "worker_lease_seconds",
        "worker_heartbeat_seconds",
        "beat_max_interval",
        "beat_missed_after",
    }
)


def _check_bounds(name: str, value: Any) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if name in _POSITIVE and not value > 0:
        raise ConfigurationError(f"setting {name} must be over 0 seconds, got {value!r}")
    low, high = _BOUNDS.get(name, (-math.inf, math.inf))
    if not low <= value <= high:
        span = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise ConfigurationError(f"setting {name} must be {span}, got {value!r}")


def check_import_names(names: list[str], where: str = "setting imports") -> None:
    """Refuse what is not a module's import name: a file path, a name with spaces (from
    ``CELERIAC_IMPORTS="a; b"``), an empty one. Found here, it is said where the names are
    given (``where``), not when a worker starts.

    Example:
        >>> check_import_names(["shop.orders.tasks"])
        >>> check_import_names(["shop/orders/tasks.py"])
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: setting imports: 'shop/orders/tasks.py' is a file; \
give its import name: 'shop.orders.tasks'
    """
    for name in names:
        if isinstance(name, str) and all(part.isidentifier() for part in name.split(".")):
            continue
        if isinstance(name, str) and (name.endswith(".py") or "/" in name):
            dotted = name.removesuffix(".py").strip("./").replace("/", ".")
            raise ConfigurationError(
                f"{where}: {name!r} is a file; give its import name: {dotted!r}"
            )
        raise ConfigurationError(
            f"{where}: {name!r} is not a module's import name (dotted Python names, "
            "e.g. 'shop.orders.tasks')"
        )


def _read_routes(value: Any) -> tuple[Any, Routes | None]:
    """``task_routes`` as given (JSON text, from ``CELERIAC_TASK_ROUTES``, read first), and
    its table (None when empty). Raises ConfigurationError, naming the route at fault."""
    if isinstance(value, str) and names_a_router(value):
        value = (value.strip(),)  # a router function's import name, not JSON
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise ConfigurationError(
                f"setting task_routes: {cut(repr(value), 80)} is not JSON; write it as "
                '\'{"shop.emails.*": "emails"}\''
            ) from None
    if value is None:
        value = {}
    routing = Routes(value) if value else None
    return frozen(value), routing  # a change in place would show, and route nothing


def _check_limits(limits: Any) -> None:
    """Refuse a named limit whose rate cannot be read, here: in the worker it failed every
    message of every task using it.

    Example:
        >>> Settings(limits={"smtp": "10/x"})
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: setting limits: 'smtp': rate limit '10/x': ...
    """
    from celeriac.middleware.rate_limit import parse_rate  # the one reader of rates

    for limit_name, rate in dict(limits).items():
        try:
            if not isinstance(rate, str):
                raise ConfigurationError(f"rate limit {rate!r} must be a str such as '100/m'")
            parse_rate(rate)
        except ConfigurationError as exc:
            raise ConfigurationError(f"setting limits: {limit_name!r}: {exc}") from None


#: Text settings that take one of a few values (compared without case).
_CHOICES: dict[str, tuple[str, ...]] = {
    "worker_log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
}


def _check_text(name: str, value: Any) -> None:
    """Refuse an empty default queue (tasks would go where no worker can consume) and a
    log level ``logging`` does not know (the worker would stop with a bare ValueError
    that names no setting)."""
    problem = queue_name_problem(value) if name == "task_default_queue" else ""
    if problem:
        raise ConfigurationError(f"setting {name} must be {problem}, got {cut(repr(value), 80)}")
    if name in ("task_serializer", "accept_content"):
        _check_serializers(name, value)
    choices = _CHOICES.get(name)
    if choices and str(value).upper() not in choices:
        raise ConfigurationError(
            f"setting {name} must be one of {', '.join(c.lower() for c in choices)}, got {value!r}"
        )


def _check_serializers(name: str, value: Any) -> None:
    """Refuse a serializer no codec has: found at each message, a worker started, then
    dead-lettered every message it read as malformed, telling to fix the producer.

    Example:
        >>> Settings(accept_content=["json", "yml"])
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: setting accept_content: 'yml' is no serializer; \
use json, msgpack or pickle
    """
    from celeriac.codec import SERIALIZERS

    for given in [value] if isinstance(value, str) else value:
        if given not in SERIALIZERS:
            raise ConfigurationError(
                f"setting {name}: {given!r} is no serializer; use json, msgpack or pickle"
            )


_CELERYS_SAID: set[str] = set()  # Celery's variables warned of in this process


def _warn_if_celerys(key: str, environ: dict[str, str]) -> None:
    """Warn about Celery's variable for a setting (``CELERY_BROKER_URL``) when celeriac's
    is not set: a deployment carried over from Celery kept it, and every process used the
    default broker (a SQLite file of its own) without a word."""
    if not key.startswith("CELERY_") or key in _CELERYS_SAID:
        return
    name = _celerys_spelling(key)
    if name is not None and f"CELERIAC_{name.upper()}" not in environ:
        _CELERYS_SAID.add(key)  # once per process: Celery's apps beside keep the variable
        logging.getLogger("celeriac").warning(
            "environment variable %s is Celery's and celeriac does not read it: set "
            "CELERIAC_%s instead (until then %s is the app's own or the default)",
            key,
            name.upper(),
            name,
        )


def _warn_if_misspelt(key: str, name: str) -> None:
    """Warn about a CELERIAC_* variable that is no setting but nearly one (a typo that
    would otherwise leave a default in force without a word)."""
    close = difflib.get_close_matches(name, list(_hints()), n=1, cutoff=0.85)
    if close:
        logging.getLogger("celeriac").warning(
            "environment variable %s is not a setting and is ignored; did you mean CELERIAC_%s?",
            key,
            close[0].upper(),
        )


def _hints() -> dict[str, Any]:
    if not _HINTS:
        fields = {f.name for f in dataclasses.fields(Settings)}  # not routing, a ClassVar
        _HINTS.update((k, v) for k, v in get_type_hints(Settings).items() if k in fields)
    return _HINTS


def _unknown(name: str) -> str:
    """What an unknown setting's error says: Celery's setting and what to set instead,
    or the closest setting.

    Example:
        >>> _unknown("enable_utc")
        "unknown setting 'enable_utc': it is Celery's; times are always kept in UTC: drop it."
    """
    if name in SETTINGS:
        return f"unknown setting {name!r}: it is Celery's; {SETTINGS[name]}."
    ours = _celerys_spelling(name)
    if ours is not None:
        return (
            f"unknown setting {name!r}: settings have lowercase names without a CELERY_ "
            f"prefix (that is Celery's spelling in a settings module): set {ours!r}, or in "
            f"the environment CELERIAC_{ours.upper()}."
        )
    close = difflib.get_close_matches(name, list(_hints()), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {name!r}.{hint} Every setting is listed in celeriac.config.Settings."


def _celerys_spelling(name: str) -> str | None:
    """The setting ``name`` stands for in Celery's spellings: ``CELERY_BROKER_URL`` (a
    Django settings module, the environment), Celery 3's ``BROKER_URL`` and
    ``CELERYD_CONCURRENCY``; None if none.

    Example:
        >>> _celerys_spelling("CELERY_BROKER_URL"), _celerys_spelling("task_tme_limit")
        ('broker_url', None)
    """
    lower = name.lower()
    candidates = [lower.removeprefix("celery_"), lower]
    for old, new in (("celeryd_", "worker_"), ("celerybeat_", "beat_")):  # Celery 3's
        if lower.startswith(old):
            candidates.append(new + lower.removeprefix(old))
    return next((c for c in candidates if c != name and c in _hints()), None)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    kinds = [k for k in get_args(hint) if k is not type(None)] if _is_optional(hint) else [hint]
    empty = value is None or (isinstance(value, str) and value.lower() in {"none", ""})
    if empty and _is_optional(hint):
        return None
    for container in (list, dict):
        if isinstance(value, container) and any(get_origin(k) is container for k in kinds):
            return container(value)
        if isinstance(value, str) and get_origin(kinds[0]) is container:
            return _parse_container(name, container, value)
    kind = kinds[0]
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(value)
            return value.lower() in {"1", "true", "yes", "on"}
        if kind is bool:
            return bool(value)
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)  # int(2.7) is 2: a silent change of what was asked
        if kind is str and not isinstance(value, str):
            raise TypeError(value)  # str(None) is "None": a queue or broker URL named "None"
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"setting {name} must be {kind.__name__}, got {_shown(name, value)}"
        ) from exc


def _check_items(name: str, hint: Any, value: list[Any]) -> None:
    """Refuse a list setting's item of the wrong kind: a list of keys with a bytes key in
    it was accepted, then failed in the codec ("'bytes' object has no attribute 'encode'")."""
    kinds = get_args(hint) if _is_optional(hint) or get_origin(hint) is not list else [hint]
    wanted = [a for k in kinds if get_origin(k) is list for a in get_args(k)]
    if str in wanted:
        for item in value:
            if not isinstance(item, str):
                raise ConfigurationError(
                    f"setting {name} must be a list of str, got an item {_shown(name, item)}"
                )


def _shown(name: str, value: Any) -> str:
    """``value`` for an error message; only its type for a secret (a signing key)."""
    if any(word in name for word in ("key", "password", "secret")):
        return f"a {type(value).__name__} (not shown: it is a secret)"
    return repr(value)


def _parse_container(name: str, container: type, value: str) -> Any:
    """A list or dict setting from the environment: JSON, or a comma-separated list."""
    stripped = value.strip()
    if container is list and not stripped.startswith("["):
        return [part.strip() for part in stripped.split(",") if part.strip()]
    try:
        return container(json.loads(stripped))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"setting {name} must be JSON, got {value!r}") from exc


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in get_args(hint)
