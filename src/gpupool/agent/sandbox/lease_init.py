"""The first process of every lease: its process-group leader and a child subreaper.

Processes of the lease that lose their parent are re-parented to this one (not to the agent
or to PID 1) and reaped here, so the lease never fills the process table with zombies. It
runs until the agent kills the lease's sandbox.

Given a command line, it first starts that command: in a lease container (container.py) each
spawn runs under its own lease init, which keeps the container's PID namespace alive after
a command that daemonises (`ray start`) has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if len(sys.argv) > 1:
        subprocess.Popen(sys.argv[1:])  # reaped by os.wait below
    while True:
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()  # woken by SIGCHLD when a new orphan arrives
        except InterruptedError:
            continue


if __name__ == "__main__":
    main()
