"""The Lua scripts: loading, identity, and what their negative return codes mean.

Each ``<operation>-<keys>.lua`` file beside this module is one atomic state transition; a
line ``-- @include name.lua`` inlines a fragment from ``includes/``. The first line of every
loaded script names the celeriac version, so the script's SHA1 — its identity in Redis's
script cache — differs between versions: two versions sharing one Redis never run each
other's scripts.

Drivers run a script with EVALSHA and, when Redis answers NOSCRIPT (a restart, a SCRIPT
FLUSH, a failover, a new Cluster node), once with EVAL, which caches it again: what
redis-py's ``register_script`` does, without its per-call overhead, and in pipelines too.
"""

from __future__ import annotations

import enum
import functools
import os
import re

import msgspec

from celeriac._version import __version__
from celeriac.errors import BrokerError, LeaseLost

VERSION = __version__

_INCLUDE = "-- @include "
_ALLOW_OOM = "-- @allow-oom"


class ErrorCode(enum.IntEnum):
    """Negative codes that scripts return instead of raising."""

    LEASE_LOST = -1  # the fencing token no longer holds the lease; nothing changed
    BAD_ARGUMENT = -2  # the client sent an argument the script does not understand


def error_for(code: int, what: str) -> BrokerError:
    """The exception for a script's negative return code.

    Example:
        >>> error_for(-1, "complete task t1")
        LeaseLost('complete task t1: the lease was lost (another worker may hold the message)')
    """
    if code == ErrorCode.LEASE_LOST:
        return LeaseLost(f"{what}: the lease was lost (another worker may hold the message)")
    if code == ErrorCode.BAD_ARGUMENT:
        return BrokerError(f"{what}: a Redis script refused its arguments (a celeriac bug)")
    return BrokerError(f"{what}: a Redis script returned the unknown code {code}")


def check(code: int, what: str) -> int:
    """Return a non-negative code; raise the mapped exception for a negative one."""
    if code < 0:
        raise error_for(code, what)
    return code


class Script(msgspec.Struct, frozen=True):
    """One loaded script: its name, full text (includes inlined) and SHA1."""

    name: str
    text: bytes
    sha: str


#: The scripts' folder: this module's, where the package installs them.
_HERE = os.path.dirname(__file__)


@functools.cache  # an include is read once, not once per script that inlines it
def _read(name: str) -> str:
    """The text of ``name`` (a script, or ``includes/<fragment>``) beside this module.

    Read as a plain file: importlib.resources, which also reads a package installed
    zipped, imports zipfile and builds a reader per call, ~4 ms of every worker's and
    every command's start for 27 scripts and their includes. A package that is not on
    disk (zipped) is read through it still.
    """
    try:
        with open(os.path.join(_HERE, name), encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        from importlib import resources  # only for a zipped install

        return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def load(name: str) -> Script:
    """Load ``<name>.lua`` with its includes inlined and the version line on top.

    A line ``-- @allow-oom`` makes the script run even when Redis is over ``maxmemory``
    (the ``#!lua flags=allow-oom`` shebang, which must be the first line): for scripts
    that only overwrite one small entry per worker, held message or queue, and that a
    full Redis must not refuse (see heartbeat-2.lua).
    """
    lines = [f"-- celeriac {VERSION}: {name}"]
    for line in _read(f"{name}.lua").splitlines():
        if line.startswith(_INCLUDE):
            lines.append(_read(f"includes/{line[len(_INCLUDE) :].strip()}"))
        elif line.strip() == _ALLOW_OOM:
            lines.insert(0, "#!lua flags=allow-oom")
        else:
            lines.append(line)
    text = "\n".join(lines).encode()
    return Script(name, text, _script_sha(text))


def _script_sha(text: bytes) -> str:
    """The SHA1 Redis names ``text`` by (EVALSHA), from CPython's own small SHA1 module.

    ``hashlib`` would load OpenSSL's libcrypto for it: ~3.8 MiB of RSS in every worker
    process, for one digest per script. An interpreter built without the module falls
    back to ``hashlib``.

    Example:
        >>> _script_sha(b"return 1")
        'e0e1f9fabfc9d4800c877a703b823ac0578ff8db'
    """
    try:
        import _sha1  # type: ignore[import-not-found]  # CPython's own SHA1 (no stubs)
    except ImportError:  # pragma: no cover - a CPython built without its own hashes
        import hashlib

        return hashlib.sha1(text, usedforsecurity=False).hexdigest()
    digest: str = _sha1.sha1(text).hexdigest()
    return digest


#: An ACL refusal inside a script: Redis 7.0 says "The user executing the script can't run
#: this command or subcommand" (or "can't access ... keys", "can't publish to the
#: channel"), 7.2 "ACL failure in script: ..."; neither is a NOPERM reply, and 7.0's does
#: not name the command, only the script's SHA1 and the line.
_DENIED_IN_SCRIPT = re.compile(
    r"(?:user executing the script can't|ACL failure in script).*"
    r"script: ([0-9a-f]{40}), on @user_script:(\d+)",
    re.DOTALL,
)
_CALL = re.compile(r"redis\.p?call\('([A-Z]+)'")


class Denial(msgspec.Struct, frozen=True):
    """What an ACL refused inside one of the broker's scripts."""

    script: str  # the script's name, e.g. "heartbeat-2"
    command: str  # the command on the refused line ("" when the line names none)
    line: int


def denied_in_script(message: str) -> Denial | None:
    """Which script and command an in-script ACL refusal is about (None: not one).

    Example:
        >>> said = "The user executing the script can't run this command or subcommand"
        >>> denied_in_script(f"{said} script: {SCRIPTS.heartbeat.sha}, on @user_script:1.")
        Denial(script='heartbeat-2', command='', line=1)
        >>> denied_in_script("WRONGTYPE Operation against a key") is None
        True
    """
    found = _DENIED_IN_SCRIPT.search(message)
    if found is None:
        return None
    sha, line = found.group(1), int(found.group(2))
    script = next((s for s in vars(SCRIPTS).values() if s.sha == sha), None)
    if script is None:  # another program's script, or another celeriac version's
        return Denial("", "", line)
    lines = script.text.decode().splitlines()
    called = _CALL.search(lines[line - 1]) if 0 < line <= len(lines) else None
    return Denial(script.name, called.group(1) if called else "", line)


class Scripts:
    """Every script of the broker, loaded once per process."""

    def __init__(self) -> None:
        self.send = load("send-2")
        self.send_one = load("send_one-5")
        self.fetch = load("fetch-15")
        self.complete = load("complete-4")
        self.complete_many = load("complete_many-0")
        self.requeue = load("requeue-15")
        self.dead_letter = load("dead_letter-6")
        self.renew = load("renew-2")
        self.reap = load("reap-16")
        self.purge = load("purge-15")
        self.replay = load("replay-13")
        self.stats = load("stats-14")
        self.peek = load("peek-13")
        self.dead_letters = load("dead_letters-2")
        self.purge_dead = load("purge_dead-2")
        self.store_result = load("store_result-1")
        self.mark_revoked = load("mark_revoked-1")
        self.publish_result = load("publish_result-1")
        self.heartbeat = load("heartbeat-2")
        self.workers = load("workers-2")
        self.drop_workers = load("drop_workers-2")
        self.join_add = load("join_add-1")
        self.kv_set = load("kv_set-1")
        self.kv_delete_if = load("kv_delete_if-1")
        self.rate_reserve = load("rate_reserve-1")
        self.rate_admit = load("rate_admit-1")
        self.register_queues = load("register_queues-1")
        self.stream_append = load("stream_append-1")
        self.may_publish = load("may_publish-0")


SCRIPTS = Scripts()
