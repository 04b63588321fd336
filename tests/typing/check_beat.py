"""Typing checks of periodic tasks, run by mypy (not pytest): `mypy` covers this file."""

from __future__ import annotations

from datetime import timedelta
from typing import assert_type

from celeriac import AsyncResult, Celeriac

app = Celeriac("typing-beat", broker="memory://")


@app.periodic(cron="*/5 * * * *", tz="Europe/Kyiv")
def refresh(currency: str = "UAH") -> int:
    return len(currency)


@app.periodic(every=timedelta(seconds=30))
async def poll(url: str = "https://example.org") -> bytes:
    return url.encode()


@app.periodic(every=60, name="report-often")
@app.task(time_limit=20)
def report(kind: str = "daily") -> str:
    return kind


@app.task
def cleanup(days: int) -> None:
    del days


def check() -> None:
    assert_type(refresh.delay("EUR"), AsyncResult[int])
    assert_type(poll.delay(), AsyncResult[bytes])
    assert_type(report.delay("weekly"), AsyncResult[str])
    scheduled = app.periodic(cleanup, cron="0 3 * * *", args=(30,))
    assert_type(scheduled.delay(7), AsyncResult[None])
    scheduled.delay("7")  # type: ignore[arg-type]
    refresh.delay(1)  # type: ignore[arg-type]
