"""Child processes that do not outlive the process that started them.

Services are started in their own session (so a stop can signal the whole group), which also
takes them out of the reach of a terminal's Ctrl-C. If the parent is killed outright (SIGKILL,
the OOM killer, a CI timeout) nothing would stop them: on Linux the kernel can, with
``PR_SET_PDEATHSIG``.

The setting is made in the child, after ``exec``, by this module run as a small launcher:
:func:`dying_with_parent` wraps a command line so that the child first asks for the signal,
checks that its parent is still the process that started it (the parent may have died in
between), and then ``exec``\\s the real command, which keeps the setting. It is not done in a
``preexec_fn``: Python runs that between ``fork`` and ``exec`` in a copy of a threaded parent,
where a lock held by another thread at the fork (the dynamic loader's, say, which
``ctypes.CDLL`` takes) is never released, and the child hangs before it starts — the parent's
``Popen`` with it. The Python documentation warns of exactly this.

The signal follows the *thread* that started the child: start long-lived children from a
long-lived thread (the main thread), not from a short-lived worker thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["dying_with_parent"]

_PR_SET_PDEATHSIG = 1


def dying_with_parent(command: Sequence[str]) -> list[str]:
    """``command``, started so that it receives SIGTERM when this process dies (Linux; elsewhere
    the command as it is)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-m", "servicekit.processes", str(os.getpid()), "--", *command]


def _main(argv: Sequence[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        usage = "usage: python -m servicekit.processes PARENT_PID -- COMMAND [ARG...]"
        print(usage, file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
        return 1
    if os.getppid() != int(argv[0]):
        return 0  # the parent died before the setting took hold: nobody is left to serve
    command = list(argv[2:])
    os.execvp(command[0], command)  # noqa: S606 - the caller's own command line, no shell
    return 1  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
