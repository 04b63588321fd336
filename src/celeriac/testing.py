"""Testing support: run queued tasks in the test's own process, and a pytest plugin.

Point the app at ``memory://`` in tests, send tasks as production code does, then call
:func:`run_queued` to run everything queued (including what those tasks send) and re-raise
the first task failure in the test::

    def test_signup(celeriac_app):
        signup.delay(42)
        run_queued(celeriac_app)          # raises if a task failed
        assert welcome_sent(42)

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
    """A fresh app on the in-memory broker."""
    from celeriac.app import Celeriac

    app = Celeriac("test", broker="memory://")
    yield app
    app.broker.close()


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = bool(predicate())  # type: ignore[operator]
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
