"""Request and response bodies of the mesh's routes (docs/mesh.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from gpupool.domain.mesh import Peer, PeerMap
from gpupool.wire.models import Request, Response

PublicKey = Annotated[str, StringConstraints(min_length=44, max_length=44)]
Endpoint = Annotated[str, StringConstraints(min_length=3, max_length=64)]
WorkerId = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class MeshKeyIn(Request):
    public_key: PublicKey = Field(description="WireGuard public key, base64 (44 characters).")


class MeshKeyOut(Response):
    address: str = Field(description="The overlay IPv4 address, the same after a rotation.")


class MeshEndpointIn(Request):
    endpoint: Endpoint = Field(description='Where this lease\'s interface listens: "host:port".')


class MeshEndpointOut(Response):
    endpoint: str


class MeshProbesIn(Request):
    rtt_ms: dict[WorkerId, Annotated[float, Field(ge=0, le=60_000)] | None] = Field(
        max_length=4096, description="Peer worker id -> direct RTT in ms; null: lost."
    )


class MeshProbesOut(Response):
    stepped: bool = Field(description="Whether this report ran the relay rule.")


class MeshPeerOut(Response):
    worker_id: str
    address: str
    public_key: str
    endpoint: str | None
    allowed_ips: list[str]


class MeshMapOut(Response):
    version: str = Field(description="Changes whenever anything in the map changes.")
    lease_id: str
    worker_id: str
    address: str
    direct_address: str
    forwards: bool = Field(description="This node relays between two peers.")
    peers: list[MeshPeerOut]

    @classmethod
    def of(cls, lease_id: str, version: str, m: PeerMap) -> MeshMapOut:
        return cls(
            version=version,
            lease_id=lease_id,
            worker_id=m.worker_id,
            address=m.address,
            direct_address=m.direct_address,
            forwards=m.forwards,
            peers=[
                MeshPeerOut(
                    worker_id=p.worker_id,
                    address=p.address,
                    public_key=p.public_key,
                    endpoint=p.endpoint,
                    allowed_ips=list(p.allowed_ips),
                )
                for p in m.peers
            ],
        )

    def peer_map(self) -> PeerMap:
        peers = tuple(
            Peer(p.worker_id, p.address, p.public_key, p.endpoint, tuple(p.allowed_ips))
            for p in self.peers
        )
        return PeerMap(self.worker_id, self.address, self.direct_address, peers, self.forwards)


class MeshConnectIn(Request):
    public_key: PublicKey = Field(description="The renter machine's WireGuard public key.")
