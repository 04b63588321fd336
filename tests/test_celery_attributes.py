"""Celery's attributes of an app, a task and a result handle that celeriac lacks: each says
what to use instead (celeriac.celery_names.ATTRIBUTES)."""

from __future__ import annotations

import pytest

from celeriac import Celeriac


def test_celerys_attributes_say_what_to_use_instead() -> None:
    app = Celeriac("celery-attributes", broker="memory://")

    # app.control.revoke(id) from Celery's code met a bare "'Celeriac' object has no
    # attribute 'control'", and result.wait() the same.
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 2)
    cases = [
        (app, "control", "use celeriac.control: revoke(app, task_id)"),
        (app, "backend", "results are stored in the broker"),
        (add, "apply", "celeriac.testing.run_queued(app)"),
        (add, "on_failure", "a Middleware's after_execute"),
        (result, "wait", "use get(timeout=...)"),
        # Celery's periodic-task idiom (a signal handler calling add_periodic_task).
        (app, "on_after_configure", "define periodic tasks where the task is: @app.periodic"),
        (app, "add_periodic_task", "app.beat.periodic(task, every=...)"),
        (app, "on_after_finalize", "Celery's beat_schedule setting"),
    ]
    for owner, name, instead in cases:
        with pytest.raises(AttributeError) as caught:
            getattr(owner, name)
        said = str(caught.value)
        kind = type(owner).__name__
        assert said.startswith(f"'{kind}' object has no attribute '{name}': it is Celery's; ")
        assert instead in said, said
        assert not hasattr(owner, name)
    with pytest.raises(AttributeError, match=r"^'Celeriac' object has no attribute 'contrl'$"):
        app.contrl  # type: ignore[attr-defined]  # noqa: B018 - a name of no one's: Python's words
