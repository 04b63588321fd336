"""In-process runs (run_queued, eager mode) behave as a worker would for the code under test."""

from __future__ import annotations

import asyncio

import pytest

from celeriac import Celeriac
from celeriac.task import Task
from celeriac.testing import run_queued


@pytest.fixture
def eager_app(celeriac_app: Celeriac) -> Celeriac:
    celeriac_app.conf.task_always_eager = True
    return celeriac_app


def test_async_tasks_run_from_an_async_test(celeriac_app: Celeriac) -> None:
    # An async test (pytest-asyncio, anyio) calls run_queued with its loop running: every
    # async def task failed with "Cannot run the event loop while another loop is running".
    @celeriac_app.task
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    async def the_test() -> int:
        r = fetch.delay(1)
        assert run_queued(celeriac_app) == 1
        return r.get(timeout=1)

    assert asyncio.run(the_test()) == 2


def test_eager_delay_from_async_code_runs_an_async_task(eager_app: Celeriac) -> None:
    # An async view under test sends an async task: the same failure, in eager mode.
    @eager_app.task
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 10

    async def view() -> int:
        return fetch.delay(4).get(timeout=1)

    assert asyncio.run(view()) == 40


def test_eager_adelay_and_send_many_run_the_tasks(eager_app: Celeriac) -> None:
    # Only the sync single send ran eagerly: adelay() and send_many() left the tasks
    # queued, so an async app's test saw PENDING forever.
    @eager_app.task
    def double(x: int) -> int:
        return 2 * x

    async def view() -> int:
        r = await double.adelay(21)
        return r.get(timeout=1)

    assert asyncio.run(view()) == 42
    batch = eager_app.send_many([double.message((i,)) for i in range(3)])
    assert [r.get(timeout=1) for r in batch] == [0, 2, 4]


def test_eager_child_failure_does_not_fail_the_task_that_sent_it(eager_app: Celeriac) -> None:
    # In production signup succeeds and welcome fails on its own. Eager mode raised
    # welcome's error out of signup's delay() call inside signup, failing signup too.
    seen: list[str | None] = []

    @eager_app.bound_task()
    def welcome(self: Task[..., None], user: int) -> None:
        seen.append(self.request.parent_id)
        raise ConnectionError(f"smtp down for {user}")

    @eager_app.task
    def signup(user: int) -> str:
        seen.append(welcome.delay(user).id)
        return "ok"

    with pytest.raises(ConnectionError, match="smtp down for 7") as info:
        signup.delay(7)  # the test still hears of welcome's failure
    signup_id, welcome_id = seen
    assert signup_id is not None and welcome_id is not None
    assert eager_app.AsyncResult(signup_id).get(timeout=1) == "ok"
    assert eager_app.AsyncResult(welcome_id).state == "FAILURE"
    assert f"raised by task {welcome.name}[{welcome_id}]" in "\n".join(info.value.__notes__)


def test_a_failure_raised_by_run_queued_names_its_task(celeriac_app: Celeriac) -> None:
    @celeriac_app.task
    def charge(order: int) -> None:
        raise ValueError(f"card declined for order {order}")

    r = charge.delay(3)
    with pytest.raises(ValueError, match="card declined") as info:
        run_queued(celeriac_app)
    notes = "\n".join(info.value.__notes__)
    assert f"raised by task {charge.name}[{r.id}]" in notes
    assert "fail_fast=False" in notes


def test_without_fail_fast_every_task_runs_after_a_failure(celeriac_app: Celeriac) -> None:
    @celeriac_app.task
    def maybe(x: int) -> int:
        if x == 0:
            raise ValueError("zero")
        return x

    results = [maybe.delay(x) for x in (0, 1, 2)]
    assert run_queued(celeriac_app, fail_fast=False) == 3
    assert [r.state for r in results] == ["FAILURE", "SUCCESS", "SUCCESS"]


def test_a_bound_task_called_directly_says_how_to_run_it_with_a_request(
    celeriac_app: Celeriac,
) -> None:
    # A unit test calling a bound task directly got "only available while the task
    # runs", with no word of how a test gives it a request.
    @celeriac_app.bound_task()
    def whoami(self: Task[..., str]) -> str:
        return self.request.id

    with pytest.raises(RuntimeError, match=r"run_queued\(app\)"):
        whoami()
    r = whoami.delay()
    run_queued(celeriac_app)
    assert r.get(timeout=1) == r.id


def test_eager_task_that_sends_itself_again_runs_every_step(eager_app: Celeriac) -> None:
    # A task that queues its next page ran each send nested in the last: eager mode
    # failed with RecursionError at about page 75, where a worker runs them one by one.
    pages: list[int] = []

    @eager_app.task
    def fetch_page(n: int) -> None:
        pages.append(n)
        if n < 300:
            fetch_page.delay(n + 1)

    fetch_page.delay(0)
    assert pages == list(range(301))


def test_an_eager_retry_waiting_its_backoff_is_explained_on_timeout(eager_app: Celeriac) -> None:
    # The timeout said to check `celeriac status` for live workers: there are none in
    # eager mode, and the retry waits for run_queued(app, include_delayed=True).
    @eager_app.task(autoretry_for=(ConnectionError,), retry_backoff=60)
    def call_api() -> str:
        raise ConnectionError("api down")

    r = call_api.delay()
    assert r.state == "RETRY"
    with pytest.raises(Exception, match=r"eager mode .* run_queued\(app, include_delayed=True\)"):
        r.get(timeout=0.1)
