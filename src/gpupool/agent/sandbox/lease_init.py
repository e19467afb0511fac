"""The first process of every lease: its process-group leader and a child subreaper.

Processes of the lease that lose their parent are re-parented to this one (not to the agent
or to PID 1) and reaped here, so the lease never fills the process table with zombies. It
runs until the agent kills the lease's sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()  # woken by SIGCHLD when a new orphan arrives
        except InterruptedError:
            continue


if __name__ == "__main__":
    main()
