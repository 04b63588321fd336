"""Fixtures for the Redis-specific tests: the session's private servers, a broker isolated
by key prefix, and a raw redis-py client for looking behind the broker's back."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import redis
from celeriac.brokers.records import Lease, Outgoing
from celeriac.brokers.redis import RedisBroker
from tests.redis_server import (
    RedisClusterNodes,
    RedisServer,
    redis_cluster,
    redis_server,
    start_redis,
)

__all__ = ["redis_cluster", "redis_server"]


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def broker(redis_server: RedisServer, prefix: str) -> Iterator[RedisBroker]:
    """A broker on the shared standalone server, under this test's prefix."""
    made = RedisBroker(f"{redis_server.url}?prefix={prefix}")
    yield made
    made.close()


@pytest.fixture
def cluster_broker(redis_cluster: RedisClusterNodes, prefix: str) -> Iterator[RedisBroker]:
    """A broker on the shared Cluster, under this test's prefix."""
    made = RedisBroker(f"{redis_cluster.url}&prefix={prefix}")
    yield made
    made.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the shared standalone server."""
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Private servers with AOF on, for a test that kills their clients or restarts them
    (``own_server(port=old.port)`` restarts one where it was, on its files); stopped by PID."""
    started: list[RedisServer] = []

    def start(folder: str = "redis", port: int | None = None) -> RedisServer:
        server = start_redis(tmp_path / folder, port=port, appendonly=True)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def held_lease(broker: RedisBroker, task_id: str) -> Lease:
    """Send ``task_id`` and take it: its lease, to commit a result with later."""
    broker.send([Outgoing(task_id, "q", b"body")])
    (delivery,) = broker.fetch(["q"], "w", limit=1, lease_seconds=120, timeout=5)
    return delivery.lease
