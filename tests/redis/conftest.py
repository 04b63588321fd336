"""Fixtures for the Redis-specific tests: the session's private servers, a broker isolated
by key prefix, and a raw redis-py client for looking behind the broker's back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import redis
from celeriac.brokers.redis import RedisBroker
from tests.redis_server import RedisClusterNodes, RedisServer, redis_cluster, redis_server

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
