"""What an operation asks of Redis, as data: the steps a plan yields to a driver.

Each broker operation is written once, as a generator (a *plan*) that yields steps and
receives their replies; the drivers run them (:mod:`.driver` on a standalone Redis,
:mod:`.cluster_driver` on Cluster, :mod:`.async_driver` for the async face). Plans hold
the logic (which script, which keys and arguments, how a reply is read) and never do
I/O, so the faces cannot drift apart. A driver error is thrown into the plan (as a
celeriac error) at the step that failed.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

import msgspec

from celeriac.brokers.redis.scripts import Script

T = TypeVar("T")
Arg: TypeAlias = bytes | str | int | float


class Call(msgspec.Struct, frozen=True):
    """Run a script: EVALSHA, and EVAL (which caches it again) when Redis says NOSCRIPT."""

    script: Script
    keys: Sequence[bytes]
    args: Sequence[Arg]


class Command(msgspec.Struct, frozen=True):
    """Run one plain Redis command; ``timeout`` (seconds) caps the wait for its reply
    below the socket timeout, on the sync driver's wire (standalone Redis) only."""

    args: tuple[Arg, ...]
    timeout: float | None = None


class Batch(msgspec.Struct, frozen=True):
    """Steps sent together in one pipeline (one round trip per node); replies in order.

    ``steps`` may be a generator of script calls and raw commands (see wire.py): on a
    standalone Redis each is sent as soon as it is made, so Redis works on the first ones
    while the rest are being built.
    """

    steps: Iterable[Call | Command]


class OnEveryNode(msgspec.Struct, frozen=True):
    """Run a command on every primary (one in standalone), or on the primaries named in
    ``nodes`` ("host:port"). The reply is a list of (node name, reply) pairs in which a
    node that failed has the BrokerError it failed with as its reply: on Cluster, a node
    that is down must not hide what the others answered."""

    command: Command
    nodes: tuple[str, ...] | None = None


class Subscribe(msgspec.Struct, frozen=True):
    """Subscribe to a pub/sub channel for the rest of the plan."""

    channel: bytes


class Listen(msgspec.Struct, frozen=True):
    """Wait up to ``timeout`` seconds for a message; the reply is its data, or None."""

    timeout: float


class Pause(msgspec.Struct, frozen=True):
    """Wait ``seconds`` without asking Redis anything (a fetch with no queue to wait on)."""

    seconds: float


Step: TypeAlias = Call | Command | Batch | OnEveryNode | Subscribe | Listen | Pause
Plan: TypeAlias = Generator[Step, Any, T]
