"""One broker per test, for every broker the conformance suite covers.

Redis brokers share the session's private servers and isolate each test by key prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.sqlite import SQLiteBroker
from tests.redis_server import RedisClusterNodes, RedisServer, redis_cluster, redis_server

__all__ = ["redis_cluster", "redis_server"]

BROKERS = ["memory", "sqlite", "redis", "redis-cluster"]


def _redis(url: str) -> Broker:
    from celeriac.brokers.redis import RedisBroker

    glue = "&" if "?" in url else "?"
    return RedisBroker(f"{url}{glue}prefix=t{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A fresh, empty broker of each kind."""
    kind = request.param
    made: Broker
    if kind == "memory":
        made = MemoryBroker()
    elif kind == "sqlite":
        made = SQLiteBroker(f"sqlite:///{tmp_path}/broker.db")
    elif kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = _redis(server.url)
    else:
        cluster: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        made = _redis(cluster.url)
    yield made
    made.close()
