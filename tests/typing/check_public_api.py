"""Typing checks of the public API, run by mypy (not pytest): `mypy` covers this file.

Lines marked `type: ignore[...]` must stay errors: mypy's warn_unused_ignores (strict) fails
the check if one of them stops being an error.
"""

from __future__ import annotations

from typing import Any, assert_type

from celeriac import AsyncResult, Celeriac, GroupResult, Task, group, shared_task

app = Celeriac("typing", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="emails")
def send_welcome(user_id: int) -> str:
    return str(user_id)


@app.task
async def fetch_page(url: str) -> bytes:
    return url.encode()


@app.bound_task()
def job(self: Task[Any, Any], x: int) -> str:
    return self.request.id + str(x)


@app.bound_task
def bare_job(self: Task[Any, Any], x: int) -> str:
    return self.request.id + str(x)


def shared() -> None:
    """@shared_task keeps the function's types, as @app.task does (not run: mypy only)."""

    @shared_task
    def double(x: int) -> int:
        return 2 * x

    @shared_task(queue="emails")
    async def page(url: str) -> bytes:
        return url.encode()

    assert_type(double.delay(2), AsyncResult[int])
    assert_type(page.delay("/"), AsyncResult[bytes])
    double.delay("2")  # type: ignore[arg-type]


def check() -> None:
    assert_type(add.delay(1, 2), AsyncResult[int])
    assert_type(add.delay(1, 2).get(timeout=1), int)
    assert_type(send_welcome.delay(42), AsyncResult[str])
    assert_type(job.delay(3), AsyncResult[str])
    assert_type(bare_job.delay(3), AsyncResult[str])
    bare_job.delay("not an int")  # type: ignore[arg-type]
    assert_type(fetch_page.delay("https://example.org"), AsyncResult[bytes])
    add.delay("x", 2)  # type: ignore[arg-type]
    add.delay(1)  # type: ignore[call-arg]
    job.delay("not an int")  # type: ignore[arg-type]


async def acheck() -> None:
    r = await add.adelay(1, 2)
    assert_type(r, AsyncResult[int])
    assert_type(await r.aget(timeout=1), int)
    assert_type(await add.s(1, 2).aapply_async(), AsyncResult[int])
    assert_type(await group(add.s(1, 2), add.s(3, 4)).adelay(), GroupResult)


@app.task(queue="pages", soft_time_limit=5)
async def fetch_with_options(url: str) -> bytes:
    return url.encode()


def check_options() -> None:
    assert_type(fetch_with_options.delay("u"), AsyncResult[bytes])
    fetch_with_options.delay(1)  # type: ignore[arg-type]
