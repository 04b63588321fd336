"""Workflow callbacks, workflows as data, and a group's result found again by its id.

    piece.link(callback)          run callback with the piece's result when it succeeds
    piece.link_error(errback)     run errback with an error dict when it fails
    piece.to_dict()               the workflow as JSON-ready data (store it, send it)
    from_dict(data, app)          the workflow back (celeriac.canvas)
    group_result.save()           keep the membership under the group's id (a send of a
    GroupResult.restore(app, id)  group saves it): find the group again in another process
    group_result.completed_count(), .ready(), .successful(), .failed()
    group_result.unfinished()     the ids of its tasks not finished: what a stuck group waits on

Run it, in this folder:  python workflows.py
It runs the tasks in this process on the in-memory broker (celeriac.testing.run_queued).
"""

from __future__ import annotations

import json
from typing import Any

from celeriac import Celeriac, GroupResult, group
from celeriac.canvas import from_dict
from celeriac.testing import run_queued

app = Celeriac("thumbnails")
app.conf.broker_url = "memory://"  # in this process (an assignment overrides the env)
notes: list[str] = []  # what the callbacks did; a real one would e-mail or update a row


@app.task
def resize(image_id: int) -> int:
    """Make the thumbnail of one image; return its size in bytes."""
    if image_id < 0:
        raise ValueError(f"image {image_id} does not exist")
    return image_id * 100


@app.task
def notify_done(sizes: list[int]) -> None:
    """Tell the user the album is ready."""
    notes.append(f"album ready: {sum(sizes)} bytes")


@app.task
def notify_failed(error: dict[str, Any], album: str) -> None:
    """Tell the user what failed (the error dict comes first, then the bound arguments).

    The dict names the task and id that failed and the error's ``type`` and ``message``;
    a group's failure is a ChordError whose message ends with the member's own error.
    """
    cause = error["message"].rsplit(": ", 1)[-1]
    notes.append(f"{album} failed: {error['type'].rsplit('.', 1)[-1]} ({cause})")


def main() -> None:
    """Send two albums with callbacks, store one as data, and read a group by its id."""
    album = group(resize.s(i) for i in (1, 2, 3))
    album.link(notify_done.s()).link_error(notify_failed.s("summer"))
    data = json.dumps(album.to_dict())  # e.g. kept in a table, sent later by a cron job

    sent = from_dict(json.loads(data), app).apply_async()
    assert isinstance(sent, GroupResult)
    group_id = sent.id  # what a web request hands back to its client

    broken = group(resize.s(i) for i in (4, -5))
    broken.link(notify_done.s()).link_error(notify_failed.s("winter"))
    bad = broken.apply_async()

    print("before:", sent.completed_count(), "of", len(sent), "waiting on", len(sent.unfinished()))
    run_queued(app, fail_fast=False)  # the failure is the example's, not the test's
    again = GroupResult.restore(app, group_id)  # in another process: by the id alone
    assert again is not None
    print("after:", again.completed_count(), "ready:", again.ready(), "ok:", again.successful())
    print("winter failed:", bad.failed(), bad.completed_count())
    # Save under another id of your own (an album's), found again the same way.
    bad.save(under="album-winter")
    winter = GroupResult.restore(app, "album-winter")
    print("restored:", winter is not None and winter.failed())
    print(*notes, sep="\n")


if __name__ == "__main__":
    main()
