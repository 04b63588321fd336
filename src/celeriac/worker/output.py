"""What tasks print reaches the worker's standard output at once, and none of it is lost.

Python buffers ``sys.stdout`` in 8 KiB blocks when it is not a terminal: under Docker,
Kubernetes, systemd or supervisord, where output goes to a pipe or a file. A task's
``print()`` then appeared only once 8 KiB had piled up, and a child ends with
``os._exit`` (no interpreter shutdown: its parent's state must not be torn down twice),
which drops the buffer: what tasks printed was lost for good at every recycle and warm
shutdown (``PYTHONUNBUFFERED=1`` hid it). The supervisor makes standard output
line-buffered before it forks, as on a terminal, and a child flushes both streams on its
way out (a ``print(..., end="")`` leaves a partial line in the buffer).
"""

from __future__ import annotations

import contextlib
import sys


def line_buffered_stdout() -> None:
    """Make ``sys.stdout`` line-buffered (it flushes what it held first), unless it was
    replaced by something that cannot be: every line a task prints is written at once.

    Example:
        >>> line_buffered_stdout()
    """
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(Exception):  # closed, detached: nothing to keep
            reconfigure(line_buffering=True)


def flush_output() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` before ``os._exit``, which does not; never
    raises (a task may have closed or replaced either).

    Example:
        >>> flush_output()
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
