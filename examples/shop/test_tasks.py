"""How to test your tasks: the memory broker, and run_queued() to run them in the test."""

from __future__ import annotations

import pytest
from tasks import app, send_welcome

from celeriac.testing import run_queued


@pytest.fixture(autouse=True)
def in_memory() -> None:
    app.conf.broker_url = "memory://"  # no worker, no files: tasks run inside the test


def test_welcome_is_sent() -> None:
    result = send_welcome.delay(42)
    run_queued(app)  # runs everything queued; re-raises a task's exception here
    assert result.get(timeout=1) == "welcome e-mail sent to user 42"
