"""The Redis broker: see :mod:`celeriac.brokers.redis.broker` for the design."""

from celeriac.brokers.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
