"""Repository of the encrypted mesh: overlay addresses with their WireGuard keys, per-lease
endpoints, the latest probes and each pair's relay state."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpupool.coordinator.storage.tables import (
    mesh_endpoints,
    mesh_nodes,
    mesh_paths,
    mesh_probes,
    mesh_rounds,
)
from gpupool.domain.mesh import PathState
from gpupool.services.ports import MeshNode

# ON CONFLICT DO NOTHING without a target covers both unique columns and the key; written
# out once, as SQLite and PostgreSQL share the syntax.
_ADD_NODE = sa.text(
    "INSERT INTO mesh_nodes (id, kind, address, public_key, cluster_id, created_at, updated_at) "
    "VALUES (:id, :kind, :address, :public_key, :cluster_id, :at, :at) "
    "ON CONFLICT DO NOTHING RETURNING id"
)


def _node(row: Any) -> MeshNode:
    return MeshNode(row.id, row.kind, row.address, row.public_key, row.cluster_id)


class SqlMesh:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def node(self, node_id: str) -> MeshNode | None:
        row = self._c.execute(mesh_nodes.select().where(mesh_nodes.c.id == node_id)).first()
        return _node(row) if row else None

    def nodes(self, node_ids: Collection[str]) -> list[MeshNode]:
        if not node_ids:
            return []
        query = mesh_nodes.select().where(mesh_nodes.c.id.in_(sorted(node_ids)))
        return [_node(r) for r in self._c.execute(query.order_by(mesh_nodes.c.id))]

    def node_with_key(self, public_key: str) -> MeshNode | None:
        query = mesh_nodes.select().where(mesh_nodes.c.public_key == public_key)
        row = self._c.execute(query).first()
        return _node(row) if row else None

    def addresses(self) -> list[str]:
        return [str(a) for a in self._c.execute(sa.select(mesh_nodes.c.address)).scalars()]

    def add_node(self, node: MeshNode, at: float) -> bool:
        values = {
            "id": node.id,
            "kind": node.kind,
            "address": node.address,
            "public_key": node.public_key,
            "cluster_id": node.cluster_id,
            "at": at,
        }
        return self._c.execute(_ADD_NODE, values).first() is not None

    def set_key(self, node_id: str, public_key: str, at: float) -> None:
        self._c.execute(
            mesh_nodes.update()
            .where(mesh_nodes.c.id == node_id)
            .values(public_key=public_key, updated_at=at)
        )

    def endpoints(self, lease_id: str) -> dict[str, str]:
        query = sa.select(mesh_endpoints.c.worker_id, mesh_endpoints.c.endpoint).where(
            mesh_endpoints.c.lease_id == lease_id
        )
        return {row.worker_id: row.endpoint for row in self._c.execute(query)}

    def set_endpoint(self, lease_id: str, worker_id: str, endpoint: str, at: float) -> None:
        where = (mesh_endpoints.c.lease_id == lease_id) & (mesh_endpoints.c.worker_id == worker_id)
        updated = self._c.execute(
            mesh_endpoints.update().where(where).values(endpoint=endpoint, updated_at=at)
        ).rowcount
        if not updated:
            self._c.execute(
                mesh_endpoints.insert().values(
                    lease_id=lease_id, worker_id=worker_id, endpoint=endpoint, updated_at=at
                )
            )

    def set_probes(
        self, lease_id: str, prober: str, rtts: dict[str, float | None], at: float
    ) -> None:
        where = (mesh_probes.c.lease_id == lease_id) & (mesh_probes.c.prober == prober)
        self._c.execute(mesh_probes.delete().where(where))
        if rtts:
            self._c.execute(
                mesh_probes.insert(),
                [
                    {"lease_id": lease_id, "prober": prober, "target": t, "rtt_ms": r, "at": at}
                    for t, r in sorted(rtts.items())
                ],
            )

    def probes(self, lease_id: str, since: float) -> dict[tuple[str, str], float | None]:
        query = mesh_probes.select().where(
            (mesh_probes.c.lease_id == lease_id) & (mesh_probes.c.at >= since)
        )
        return {(r.prober, r.target): r.rtt_ms for r in self._c.execute(query)}

    def paths(self, lease_id: str) -> dict[tuple[str, str], PathState]:
        query = mesh_paths.select().where(mesh_paths.c.lease_id == lease_id)
        return {
            (r.a, r.b): PathState(r.relay, r.direct_failures, r.direct_good)
            for r in self._c.execute(query)
        }

    def save_paths(self, lease_id: str, states: dict[tuple[str, str], PathState]) -> None:
        self._c.execute(mesh_paths.delete().where(mesh_paths.c.lease_id == lease_id))
        if states:
            self._c.execute(
                mesh_paths.insert(),
                [
                    {
                        "lease_id": lease_id,
                        "a": a,
                        "b": b,
                        "relay": s.relay,
                        "direct_failures": s.direct_failures,
                        "direct_good": s.direct_good,
                    }
                    for (a, b), s in sorted(states.items())
                ],
            )

    def lock_round(self, lease_id: str) -> float:
        self._c.execute(
            sa.text(
                "INSERT INTO mesh_rounds (lease_id, stepped_at) VALUES (:lease, 0) "
                "ON CONFLICT DO NOTHING"
            ),
            {"lease": lease_id},
        )
        query = (
            sa.select(mesh_rounds.c.stepped_at)
            .where(mesh_rounds.c.lease_id == lease_id)
            .with_for_update()
        )
        return float(self._c.execute(query).scalar_one())

    def set_round(self, lease_id: str, at: float) -> None:
        self._c.execute(
            mesh_rounds.update().where(mesh_rounds.c.lease_id == lease_id).values(stepped_at=at)
        )
