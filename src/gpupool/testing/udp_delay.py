"""A UDP relay that forwards every datagram after a fixed delay: WAN latency for tests on a
kernel without netem.

    python -m gpupool.testing.udp_delay --listen 10.77.0.1:0 --target 10.77.0.3:51820 \
        --delay-ms 20

It prints `listening HOST:PORT` once bound. Datagrams from each client go to the target from
a socket of their own, and the target's answers on that socket go back to that client after
the same delay, so the round trip grows by twice the delay. To put a WireGuard pair on a
"WAN", give one side the relay's address as the other's endpoint: the far side roams to the
relay's socket by itself (WireGuard follows a peer's latest source address).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import selectors
import socket
import time

Address = tuple[str, int]


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(listen: Address, target: Address, delay: float) -> None:
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(listen)
    print("listening {}:{}".format(*front.getsockname()), flush=True)
    selector = selectors.DefaultSelector()
    selector.register(front, selectors.EVENT_READ)
    backs: dict[Address, socket.socket] = {}
    clients: dict[socket.socket, Address] = {}
    due: list[tuple[float, int, socket.socket, bytes, Address]] = []
    order = itertools.count()
    while True:
        wait = max(0.0, due[0][0] - time.monotonic()) if due else None
        for key, _ in selector.select(wait):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data, source = sock.recvfrom(65535)
            if sock is front:
                back = backs.get(source)
                if back is None:
                    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    back.bind((listen[0], 0))
                    backs[source], clients[back] = back, source
                    selector.register(back, selectors.EVENT_READ)
                item = (time.monotonic() + delay, next(order), back, data, target)
            else:
                item = (time.monotonic() + delay, next(order), front, data, clients[sock])
            heapq.heappush(due, item)
        while due and due[0][0] <= time.monotonic():
            _, _, sock, data, to = heapq.heappop(due)
            sock.sendto(data, to)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--target", type=_address, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args()
    serve(args.listen, args.target, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
