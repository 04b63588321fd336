"""Testing support: run queued tasks in the test's own process, and a pytest plugin.

Point the app at ``memory://`` in tests, send tasks as production code does, then call
:func:`run_queued` to run everything queued (including what those tasks send) and re-raise
the first task failure in the test::

    def test_signup(celeriac_app):
        signup.delay(42)
        run_queued(celeriac_app)          # raises if a task failed
        assert welcome_sent(42)

Tasks run as a worker runs them (middleware, arguments through the wire format, results
stored), with these differences: no soft or hard time limits; delayed work (countdown,
ETA, a retry's backoff, a rate-limited task) runs only with ``include_delayed=True``; a
dead-lettered task (``Reject``) is not raised. ``task_always_eager`` runs each send this
way at once.

The ``celeriac_app`` fixture is a fresh ``Celeriac("test", broker="memory://")``; override
it in your conftest to return your own app switched to ``memory://``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from celeriac.worker.inline import run_queued

if TYPE_CHECKING:
    from celeriac.app import Celeriac

__all__ = ["celeriac_app", "run_queued", "wait_for"]


@pytest.fixture
def celeriac_app() -> Iterator[Celeriac]:
    """A fresh app on the in-memory broker, closed after the test.

    Example:
        A test that defines its own task (the fixture comes with celeriac: no import)::

            from celeriac.testing import run_queued

            def test_double(celeriac_app):
                double = celeriac_app.task(lambda x: 2 * x, name="double")
                r = double.delay(21)
                run_queued(celeriac_app)
                assert r.get(timeout=1) == 42
    """
    from celeriac.app import Celeriac

    app = Celeriac("test", broker="memory://")
    yield app
    app.broker.close()


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes; return its last value.

    For tests against a real worker: wait for a condition with a generous deadline, not a
    fixed sleep (assert on the returned value, with what was seen as the message).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> r = app.AsyncResult("never-sent")
        >>> wait_for(lambda: r.ready(), timeout=0.05)
        False
    """
    deadline = time.monotonic() + timeout
    while True:
        value = bool(predicate())  # type: ignore[operator]
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
