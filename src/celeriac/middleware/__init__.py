"""Middleware: every policy the worker applies, one per module.

The worker core only moves messages; expiry, results and (later) retries, rate limits,
dedupe and canvas live here as :class:`Middleware` subclasses.
"""

from celeriac.middleware.base import Job, Middleware, MiddlewareStack, Outcome
from celeriac.middleware.events import Events
from celeriac.middleware.expiry import Expiry
from celeriac.middleware.results import Results
from celeriac.middleware.retries import Retries
from celeriac.middleware.revocation import Revocation


def default_middleware() -> list[Middleware]:
    """The middleware every app gets unless it passes its own list."""
    return [Expiry(), Revocation(), Results(), Retries(), Events()]


__all__ = [
    "Events",
    "Expiry",
    "Job",
    "Middleware",
    "MiddlewareStack",
    "Outcome",
    "Results",
    "Retries",
    "Revocation",
    "default_middleware",
]
