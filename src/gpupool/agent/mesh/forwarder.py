"""A TCP forwarder from the agent's namespace to one service inside a lease's namespace
(docs/mesh.md, "The forwarder").

The lease's namespace has no route to the host, so the coordinator's job proxy and the
member agents reach the head's Ray dashboard through this: a listener in the agent's
namespace whose upstream sockets are made inside the lease's. A socket belongs to the
namespace of the thread that created it, so one dialer thread enters the lease's namespace
once (setns through libc: Python 3.11 has no os.setns) and only ever makes sockets there;
the agent's other threads never change namespace. Every connection goes to the one upstream
address it was built for, never to one a client names.

Bounded: at most `max_connections` at a time (more are closed at once), a connect timeout,
an idle timeout after which both ends are closed, and `close` ends every connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("gpupool.agent.mesh.forwarder")

CLONE_NEWNET = 0x40000000
BUFFER = 65536


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path` (root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def in_netns(path: str, call: Callable[[], T]) -> T:
    """`call()` on a short-lived thread moved into the namespace at `path`, so that sockets
    it makes (binding an address that exists only there, say) are the namespace's; the
    calling thread never changes namespace."""
    out: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(path)
            out.append(call())
        except BaseException as exc:  # handed back to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="in-netns", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return out[0]


def _thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class Forwarder:
    """`listen_host:port` in the agent's namespace -> `upstream` inside `netns_path`."""

    def __init__(
        self,
        netns_path: str,
        upstream: tuple[str, int],
        listen_host: str,
        *,
        listen_port: int = 0,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
        idle_timeout: float = 300.0,
    ) -> None:
        self.netns_path = netns_path
        self.upstream = upstream
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._dialer = ThreadPoolExecutor(
            1, thread_name_prefix="forward-dial", initializer=enter_netns, initargs=(netns_path,)
        )
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            # a dialer that could not enter fails here, not on the first client
            inode = self._dialer.submit(_thread_netns).result(timeout=10)
            if inode != os.stat(netns_path).st_ino:
                raise OSError(f"the dialer is not inside {netns_path}")
            self._listener = socket.create_server((listen_host, listen_port), backlog=64)
        except BaseException:
            self._dialer.shutdown(wait=True)
            raise
        self._listener.settimeout(0.2)  # how soon `close` stops the accept loop
        self._thread = threading.Thread(target=self._accept_loop, name="forward", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop listening and end every connection; returns once nothing is left inside."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._dialer.shutdown(wait=True)  # the last thread holding the namespace ends

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                log.warning("event=forward_refused peer=%s reason=too many connections", peer[0])
                client.close()
                continue
            threading.Thread(
                target=self._serve, args=(client,), name="forward-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = self._dialer.submit(socket.socket).result(timeout=self.connect_timeout)
            self._track(client, upstream)
            upstream.settimeout(self.connect_timeout)
            upstream.connect(self.upstream)
            self._pump(client, upstream)
        except (OSError, TimeoutError, RuntimeError) as exc:
            log.info("event=forward_failed upstream=%s:%d reason=%s", *self.upstream, exc)
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._open.discard(sock)
                    sock.close()
            self._slots.release()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the forwarder is closing")
            self._open.update(socks)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy both ways until both have ended, or nothing moved for `idle_timeout`. An end
        of one direction is passed on as a half close, so HTTP clients that shut down their
        writing side still get the answer."""
        other = {client: upstream, upstream: client}
        for sock in other:
            sock.setblocking(False)
        with selectors.DefaultSelector() as sel:
            for sock in other:
                sel.register(sock, selectors.EVENT_READ)
            while sel.get_map():
                ready = sel.select(timeout=self.idle_timeout)
                if not ready or self._stop.is_set():
                    return
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(BUFFER)
                    if data:  # a reader that stalls for idle_timeout ends the connection too
                        other[source].settimeout(self.idle_timeout)
                        other[source].sendall(data)
                        other[source].setblocking(False)
                    else:
                        sel.unregister(source)
                        with contextlib.suppress(OSError):
                            other[source].shutdown(socket.SHUT_WR)
