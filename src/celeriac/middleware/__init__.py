"""Middleware: every policy the worker applies, one per module.

The worker core only moves messages; expiry, results and (later) retries, rate limits,
dedupe and canvas live here as :class:`Middleware` subclasses.
"""

from celeriac.middleware.base import Job, Middleware, MiddlewareStack, Outcome
from celeriac.middleware.canvas import Canvas
from celeriac.middleware.dedupe import Dedupe
from celeriac.middleware.events import Events
from celeriac.middleware.expiry import Expiry
from celeriac.middleware.rate_limit import RateLimit
from celeriac.middleware.results import Results
from celeriac.middleware.retries import Retries
from celeriac.middleware.revocation import Revocation
from celeriac.middleware.ticks import Ticks
from celeriac.middleware.verdicts import Verdicts


def default_middleware() -> list[Middleware]:
    """The middleware every app gets unless it passes its own list: keep them, and add
    yours after them (``Celeriac(..., middleware=[*default_middleware(), Audit()])``).
    Beside Django (``DJANGO_SETTINGS_MODULE`` set), its connections' keeper too
    (:class:`celeriac.integrations.django.DjangoConnections`).

    Example:
        >>> from celeriac import Celeriac, Middleware
        >>> class Audit(Middleware):
        ...     options = frozenset({"audit"})
        >>> app = Celeriac("doc", broker="memory://", middleware=[*default_middleware(), Audit()])
        >>> [type(m).__name__ for m in default_middleware()][:3]
        ['Canvas', 'Verdicts', 'Expiry']
        >>> @app.task(audit=True)  # refused without Audit: no middleware declares it
        ... def charge(order_id: int) -> None: ...
        >>> charge.options.extra
        {'audit': True}
    """
    # Canvas first: its after_execute then runs last and sees the final outcome (after
    # Retries decided whether a failure is final).
    found: list[Middleware] = [
        Canvas(),
        Verdicts(),
        Expiry(),
        Revocation(),
        Dedupe(),
        RateLimit(),
        Ticks(),  # after every hook that may put the message back: its fence is a start
        Results(),
        Retries(),
        Events(),
    ]
    from celeriac.integrations import django  # imports no Django: it looks for it

    if django.in_use():  # last: its hooks run right before and right after the task
        found.append(django.DjangoConnections())
    return found


__all__ = [
    "Canvas",
    "Dedupe",
    "Events",
    "Expiry",
    "Job",
    "Middleware",
    "MiddlewareStack",
    "Outcome",
    "RateLimit",
    "Results",
    "Retries",
    "Revocation",
    "Ticks",
    "Verdicts",
    "default_middleware",
]
