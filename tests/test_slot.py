"""The slot under a writer that never stops: every read is a whole record, never a torn one.

A child rewrites its slot after every task; the supervisor reads it every tick. The header
was written with struct.pack_into, which zeroes it and then fills it a byte at a time, so a
read could pair a new sequence with a zero length: the supervisor died on "Input data was
truncated" (seen under load on SQLite), or read a zero sequence as "holds nothing".
"""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from celeriac.worker.slot import Held, Slot


def test_a_reader_never_sees_a_torn_record_while_a_child_writes() -> None:
    slot = Slot()
    slot.write([Held(id="t-0-0", queue="default", token=f"{0:032x}")], rss=0)
    pid = os.fork()
    if pid == 0:  # the writer, as a child process is: records of 1 to 7 held messages
        try:
            i = 1
            while True:
                held = [Held(f"t-{i}-{k}", "default", f"{i:032x}") for k in range(1 + i % 7)]
                slot.write(held, rss=i)
                i += 1
        finally:
            os._exit(0)
    errors: list[str] = []
    empty = reads = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                view = slot.read()
            except Exception as exc:  # noqa: BLE001 - counted: the supervisor died of it
                errors.append(repr(exc))
                continue
            reads += 1
            if not view.held:
                empty += 1  # every record written holds at least one message
            for held in view.held:  # whole: every message of one record, none of another
                assert held.token == f"{view.rss:032x}", (held, view.rss)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert reads > 100
    assert errors == [] and empty == 0, (len(errors), errors[:3], empty, reads)


def test_a_slot_too_small_for_what_it_holds_names_the_length_of_the_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "lower the concurrency (-c)", for 1,000 tasks whose 5,000-character ids did not fit.
    slot = Slot(size=64 * 1024)
    held = [Held(f"{k:04d}{'k' * 4_996}", "default", f"{k:032x}") for k in range(40)]
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        slot.write(held, rss=0)
    assert "or shorten the task ids (the longest here: 5000 characters)" in caplog.text
    assert len(slot.read().held) < 40
