"""A TCP forwarder from this process's network namespace into another one, for tests.

    port, close = forward_into("gptab12cd-coord", "10.77.0.2", 8420)
    Client(f"http://127.0.0.1:{port}")      # reaches 10.77.0.2:8420 inside the namespace

The listening socket is made here (on 127.0.0.1); a thread then enters the target namespace
(setns acts on the calling thread only) and makes each upstream connection there, so the test
process itself talks to a coordinator that runs among namespaced agents. Needs root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable

CLONE_NEWNET = 0x40000000


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
    finally:
        os.close(fd)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def forward_into(netns: str, host: str, port: int) -> tuple[int, Callable[[], None]]:
    """A local port that forwards to host:port inside `netns`, and a function that stops it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    entered = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            _enter(netns)
        except OSError as exc:
            failure.append(exc)
            return
        finally:
            entered.set()
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((host, port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, name=f"forward-{netns}", daemon=True).start()
    entered.wait(5)
    if failure:
        listener.close()
        raise failure[0]

    def close() -> None:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()

    return listener.getsockname()[1], close
