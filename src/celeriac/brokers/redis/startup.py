"""The start-up check of a Redis server, as a plan (see :mod:`.steps`): its version, its
eviction policy and its persistence, said once per process tree; and its timer tick, which
sizes the fetch's last stretch before a delayed message (ops.Context.block_tick).
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

from celeriac import pid
from celeriac.brokers.redis.ops import BLOCK_TICK, Context
from celeriac.brokers.redis.scripts import SCRIPTS
from celeriac.brokers.redis.steps import Call, Command, OnEveryNode, Plan
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError

MIN_REDIS = 7  # major version the scripts need (LMPOP)


def check_server(ctx: Context, url: str) -> Plan[None]:
    """Refuse Redis before 7.0 and an evicting ``maxmemory-policy``; warn when persistence
    is off. A server that refuses INFO or CONFIG (managed services) gets a warning.

    The warnings go to the ``celeriac.brokers.redis.startup`` logger, once per process
    tree: a worker or beat says them when it starts; the CLI's one-shot commands (status,
    result, dlq list...) raise that logger's level so that they do not repeat them.

    Raises:
        ConfigurationError: the server is too old, or eviction could delete queued tasks.
    """
    # A command every server runs: a refused handshake (wrong password, a database number
    # the server does not have) is an error here, not mistaken below for a disabled CONFIG.
    nodes = yield from _answering(url)
    servers = yield from _ask(Command(("INFO", "server")), url, nodes)
    for server in servers or []:
        version = str(server.get("redis_version", "0")) if isinstance(server, dict) else "0"
        if int(version.split(".")[0]) < MIN_REDIS:
            raise ConfigurationError(
                f"Redis at {url} is version {version}; celeriac needs Redis {MIN_REDIS}.0 or "
                "newer (its scripts use LMPOP and other Redis 7 commands)."
            )
    yield from _check_channels(ctx, url)
    settings: dict[bytes, list[bytes]] = {}
    for name in (b"maxmemory-policy", b"save", b"appendonly", b"hz"):
        replies = yield from _ask(Command(("CONFIG", "GET", name)), url, nodes)
        if replies is None:
            return
        settings[name] = [config_value(reply, name) for reply in replies]
    evicting = sorted({p.decode() for p in settings[b"maxmemory-policy"]} - {"noeviction"})
    if evicting:
        raise ConfigurationError(
            f"Redis at {url} uses maxmemory-policy {', '.join(evicting)}: under memory "
            "pressure it would delete queued tasks. Set `maxmemory-policy noeviction` (in "
            "redis.conf, or CONFIG SET maxmemory-policy noeviction) before using it as a "
            "celeriac broker."
        )
    ctx.block_tick = timer_tick(settings[b"hz"])
    no_rdb = all(not save.strip() for save in settings[b"save"])
    no_aof = all(aof == b"no" for aof in settings[b"appendonly"])
    if no_rdb and no_aof:
        _warn_once(
            "Redis at %s has persistence off (no AOF, no RDB save points): a restart "
            "loses every queued task. Set `appendonly yes` for a durable broker.",
            url,
        )


def _check_channels(ctx: Context, url: str) -> Plan[None]:
    """Warn when the URL's ACL user may not publish result wake-ups (Redis 7 gives a new
    user no channel): settles skip a refused wake-up, so results are stored, but waiters
    only find them by re-reading, and nothing else says so."""
    channel = ctx.keys.channel("0")
    try:
        allowed = yield Call(SCRIPTS.may_publish, (), (channel,))
    except BrokerError:
        # Scripts refused: the first call that needs one says what to grant. Unreachable:
        # on Cluster a script without keys goes to any node, maybe one that is down (the
        # check of the others passed), and a warning's check must not stop the process.
        return
    if not allowed:
        user = urlsplit(url).username or "default"
        _warn_once(
            "Redis at %s does not let the URL's user %r publish to the channel %s: tasks "
            "commit and store their results, but result waiters (get(), aget()) are not "
            "woken and see them only when they read again, once a second. Grant the "
            "broker's channels: ACL SETUSER %s &%s:*",
            url,
            user,
            channel.decode(errors="replace"),
            user,
            ctx.keys.prefix.decode(errors="replace"),
        )


#: Seconds a parent's passed check stands for a child it forked (see parent_passed).
CHECK_INHERITED_FOR = 10.0


def timer_tick(hz_values: list[bytes]) -> float:
    """Seconds between an idle server's timer turns, from its ``hz`` settings (one per
    node): the slowest node's, as any may serve a queue. A value that is not a number
    leaves the default tick.

    Example:
        >>> timer_tick([b"100", b"50"])
        0.02
        >>> timer_tick([b"?"])
        0.1
    """
    try:
        slowest = min(int(value) for value in hz_values)
    except ValueError:
        return BLOCK_TICK
    return 1 / min(max(slowest, 1), 500)  # Redis itself keeps hz within 1..500


#: The last passed check of each server (by its redacted URL): the process that passed it,
#: when (on the monotonic clock), and the server's timer tick it read. A forked child
#: inherits it with the module's state.
_passed: dict[str, tuple[int, float, float]] = {}


def record_pass(url: str, ctx: Context) -> None:
    """Note that the server at ``url`` passed :func:`check_server` in this process."""
    _passed[url] = (pid.current(), time.monotonic(), ctx.block_tick)


def inherited_tick(url: str) -> float:
    """The timer tick the last passed check of ``url`` read (BLOCK_TICK if none): what a
    child that skips its own check (see parent_passed) sizes its fetches by."""
    return _passed.get(url, (0, 0.0, BLOCK_TICK))[2]


def parent_passed(url: str) -> bool:
    """True when the process this one was forked from (or an ancestor) passed the check
    of ``url`` less than :data:`CHECK_INHERITED_FOR` seconds ago.

    A worker's first children start within a second of their supervisor's check: they
    skip their own, six round trips before their first task. A child started later (a
    recycle, a respawn after a crash) checks again, as does any new broker in the
    process that checked (the server's settings may have changed since).
    """
    by, at, _ = _passed.get(url, (0, 0.0, BLOCK_TICK))
    return by not in (0, pid.current()) and time.monotonic() - at < CHECK_INHERITED_FOR


#: Start-up warnings already logged by this process or the one it was forked from: a
#: worker's children check the server again (one may start hours later), but repeating the
#: supervisor's warning once per child only buries it.
_warned: set[tuple[str, ...]] = set()


#: Where the start-up check's warnings go (see check_server): a logger of their own, so a
#: one-shot command can leave them to the long-lived processes and keep every other one.
startup_log = logging.getLogger("celeriac.brokers.redis.startup")


def _warn_once(message: str, *args: str) -> None:
    """Log a start-up warning unless this process tree already logged it."""
    key = (message, *args)
    if key not in _warned and startup_log.isEnabledFor(logging.WARNING):
        _warned.add(key)  # only once said: a quiet one-shot caller leaves it to the next
        startup_log.warning(message, *args)


def _answering(url: str) -> Plan[tuple[str, ...]]:
    """The nodes that answer PING. On Cluster, a primary that is down (no replica took
    over) is said once and left out: every process started meanwhile failed its first
    call, even to queues whose slots the other nodes serve. None answering is an error.

    Raises:
        BrokerError: no node answers, or one refused the handshake (a wrong password).
    """
    replies = yield OnEveryNode(Command(("PING",)))
    down = [(name, r) for name, r in replies if isinstance(r, BrokerError)]
    refused = [r for _, r in down if not isinstance(r, BrokerConnectionError)]
    if refused or len(down) == len(replies):
        raise (refused or [r for _, r in down])[0]
    for name, error in down:
        _warn_once(
            "Redis Cluster node %s does not answer (%s): the queues and results in its "
            "slots fail until it is back or a replica takes over; the other nodes' work "
            "on. `redis-cli --cluster check HOST:PORT` shows which slots it serves.",
            name,
            str(error),
        )
    return tuple(name for name, r in replies if not isinstance(r, BrokerError))


def _ask(command: Command, url: str, nodes: tuple[str, ...]) -> Plan[list[Any] | None]:
    """Run a command on ``nodes``; None (and a warning) when the server refuses it."""
    try:
        answered: list[tuple[str, Any]] = yield OnEveryNode(command, nodes)
        replies = [reply for _, reply in answered]
        failed = [reply for reply in replies if isinstance(reply, BrokerError)]
        if failed:
            raise failed[0]
    except BrokerConnectionError:
        raise
    except BrokerError as exc:
        _warn_once(
            "cannot run %s on Redis at %s (disabled, as on many managed services): check "
            "yourself that it is Redis 7 or newer, that maxmemory-policy is noeviction and "
            "that persistence is on. (%s)",
            " ".join(str(a) for a in command.args[:2]),
            url,
            str(exc),
        )
        return None
    return replies


def config_value(reply: Any, name: bytes) -> bytes:
    """The value in a ``CONFIG GET name`` reply (a RESP3 map, or a flat RESP2 list).

    Example:
        >>> config_value([b"maxmemory-policy", b"noeviction"], b"maxmemory-policy")
        b'noeviction'
    """
    if isinstance(reply, dict):
        value = reply.get(name, reply.get(name.decode(), b""))
    else:  # a flat [name, value] list
        value = reply[1] if len(reply) > 1 else b""
    return value.encode() if isinstance(value, str) else bytes(value or b"")
