"""The tasks of tests/apps/split.py's app: nothing imports this module but the app's
``imports`` setting (a worker's ``-A tests.apps.split``)."""

from __future__ import annotations

from tests.apps.split import app


@app.task
def shout(text: str) -> str:
    """The text, louder."""
    return f"{text.upper()}!"
