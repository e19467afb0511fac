"""The repository of leases' Ray nodes (table `ray_nodes`)."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.engine import Connection

from gpupool.coordinator.storage.tables import ray_nodes
from gpupool.services.ports import RayNodeRecord


class SqlRayNodes:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def save(self, node: RayNodeRecord) -> None:
        key = (ray_nodes.c.lease_id == node.lease_id) & (ray_nodes.c.worker_id == node.worker_id)
        updated = self._c.execute(ray_nodes.update().where(key).values(**asdict(node)))
        if updated.rowcount == 0:
            self._c.execute(ray_nodes.insert().values(**asdict(node)))

    def nodes(self, lease_id: str) -> list[RayNodeRecord]:
        rows = self._c.execute(
            ray_nodes.select()
            .where(ray_nodes.c.lease_id == lease_id)
            .order_by(ray_nodes.c.role.desc(), ray_nodes.c.worker_id)
        ).mappings()
        return [RayNodeRecord(**row) for row in rows]
