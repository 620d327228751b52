"""Child processes that do not outlive the process that started them.

Services are started in their own session (so a stop can signal the whole group), which also
takes them out of the reach of a terminal's Ctrl-C. If the parent is killed outright (SIGKILL,
the OOM killer, a CI timeout) nothing would stop them: on Linux the kernel can, with
``PR_SET_PDEATHSIG``. Pass :func:`die_with_parent` as ``preexec_fn`` to ``subprocess.Popen``.

The signal follows the *thread* that started the child: start long-lived children from a
long-lived thread (the main thread), not from a short-lived worker thread.
"""

from __future__ import annotations

import ctypes
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the parent dies (Linux; elsewhere no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
