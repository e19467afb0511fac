"""A TCP forwarder across network namespaces, for tests that run a coordinator inside a
namespace and talk to it from the test process.

    python -m gpupool.testing.tcp_forward --fd 5 --target 10.77.0.2:8420

The listening socket (`--fd`) was made by the parent in *its* namespace and inherited; this
process runs inside the target's namespace (`ip netns exec`), so each accepted connection
is joined to a fresh connection to the target there. A socket keeps the namespace it was
made in, which is all the trick needs.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, target: tuple[str, int]) -> None:
    with client:
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            return
        upstream.settimeout(None)
        with upstream:
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--target", required=True, help="host:port to connect to")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    listener = socket.socket(fileno=args.fd)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, (host, int(port))), daemon=True).start()


if __name__ == "__main__":
    main()
