"""A process that must not outlive its parent: the kernel's parent-death signal.

Example:
    >>> from celeriac.parent import stop_with_parent
    >>> stop_with_parent(0)  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the parent dies, however it dies (SIGKILL, the OOM killer).

    Used by a worker's child (whose supervisor renews its leases and enforces its limits)
    and, before exec, by the demo's worker. The signal survives exec. ``parent_pid`` (0:
    not checked) covers a parent that died before the call took hold. Linux only; a
    no-op elsewhere.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid and os.getppid() != parent_pid:  # it died before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)
