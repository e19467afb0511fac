"""The repository of protocol-mode tasks and their runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpupool.coordinator.storage.ledger_tables import task_runs, tasks, worker_addresses
from gpupool.services.ports import RunRecord, TaskRecord


def _task(row: Any) -> TaskRecord:
    return TaskRecord(
        row.id,
        row.renter_id,
        row.command,
        row.image,
        bytes(row.input),
        row.input_hash,
        row.tolerance,
        row.state,
        row.validation,
        row.validator_id,
        row.created_at,
    )


def _run(row: Any) -> RunRecord:
    return RunRecord(
        row.id,
        row.task_id,
        row.purpose,
        row.device_id,
        row.worker_id,
        row.supplier_id,
        row.state,
        bytes(row.output) if row.output is not None else None,
        row.output_hash,
        row.error,
        row.created_at,
        row.finished_at,
    )


def _drawable(p: float) -> sa.ColumnElement[bool]:
    """Not sampled yet, and never drawn with p or more."""
    return sa.and_(
        tasks.c.validation.in_(("none", "passed-over")),
        sa.or_(tasks.c.drawn_p.is_(None), tasks.c.drawn_p < p),
    )


class SqlTasks:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def add_task(self, task: TaskRecord) -> None:
        self._c.execute(
            tasks.insert().values(
                id=task.id,
                renter_id=task.renter_id,
                command=task.command,
                image=task.image,
                input=task.input,
                input_hash=task.input_hash,
                tolerance=task.tolerance,
                state=task.state,
                validation=task.validation,
                validator_id=task.validator_id,
                created_at=task.created_at,
            )
        )

    def task(self, task_id: str) -> TaskRecord | None:
        row = self._c.execute(tasks.select().where(tasks.c.id == task_id)).first()
        return _task(row) if row else None

    def tasks_of(self, renter_id: str) -> list[TaskRecord]:
        rows = self._c.execute(
            tasks.select()
            .where(tasks.c.renter_id == renter_id)
            .order_by(tasks.c.created_at, tasks.c.id)
        )
        return [_task(r) for r in rows]

    def tasks_by_id(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        if not task_ids:
            return []
        rows = self._c.execute(
            tasks.select().where(tasks.c.id.in_(list(task_ids))).order_by(tasks.c.id)
        )
        return [_task(r) for r in rows]

    def set_task(
        self, task_id: str, *, state: str, validation: str, validator_id: str | None
    ) -> None:
        self._c.execute(
            tasks.update()
            .where(tasks.c.id == task_id)
            .values(state=state, validation=validation, validator_id=validator_id)
        )

    def unvalidated(self, p: float) -> dict[str, float | None]:
        rows = self._c.execute(
            sa.select(tasks.c.id, tasks.c.drawn_p)
            .where(tasks.c.state == "done", _drawable(p))
            .order_by(tasks.c.created_at, tasks.c.id)
        )
        return {r.id: r.drawn_p for r in rows}

    def claim_validation(
        self, task_id: str, validation: str, validator_id: str | None, p: float
    ) -> bool:
        claimed = self._c.execute(
            tasks.update()
            .where(tasks.c.id == task_id, tasks.c.state == "done", _drawable(p))
            .values(validation=validation, validator_id=validator_id, drawn_p=p)
        ).rowcount
        return bool(claimed)

    def overdue_runs(self, before: float) -> list[RunRecord]:
        rows = self._c.execute(
            task_runs.select()
            .where(task_runs.c.state == "assigned", task_runs.c.assigned_at < before)
            .order_by(task_runs.c.assigned_at, task_runs.c.id)
        )
        return [_run(r) for r in rows]

    def add_run(self, run: RunRecord) -> None:
        self._c.execute(
            task_runs.insert().values(
                id=run.id,
                task_id=run.task_id,
                purpose=run.purpose,
                device_id=run.device_id,
                worker_id=run.worker_id,
                supplier_id=run.supplier_id,
                state=run.state,
                output=run.output,
                output_hash=run.output_hash,
                error=run.error,
                created_at=run.created_at,
                finished_at=run.finished_at,
            )
        )

    def run(self, run_id: str) -> RunRecord | None:
        row = self._c.execute(task_runs.select().where(task_runs.c.id == run_id)).first()
        return _run(row) if row else None

    def runs(self, task_id: str) -> list[RunRecord]:
        rows = self._c.execute(
            task_runs.select()
            .where(task_runs.c.task_id == task_id)
            .order_by(task_runs.c.created_at, task_runs.c.id)
        )
        return [_run(r) for r in rows]

    def waiting_runs(self) -> list[RunRecord]:
        rows = self._c.execute(
            task_runs.select()
            .where(task_runs.c.state == "waiting")
            .order_by(task_runs.c.created_at, task_runs.c.id)
        )
        return [_run(r) for r in rows]

    def assign_run(
        self, run_id: str, device_id: str, worker_id: str, supplier_id: str, at: float
    ) -> None:
        self._c.execute(
            task_runs.update()
            .where(task_runs.c.id == run_id, task_runs.c.state == "waiting")
            .values(
                state="assigned",
                device_id=device_id,
                worker_id=worker_id,
                supplier_id=supplier_id,
                assigned_at=at,
            )
        )

    def finish_run(
        self,
        run_id: str,
        *,
        state: str,
        output: bytes | None,
        output_hash: str | None,
        error: str,
        at: float,
    ) -> bool:
        done = self._c.execute(
            task_runs.update()
            .where(task_runs.c.id == run_id, task_runs.c.state == "assigned")
            .values(
                state=state, output=output, output_hash=output_hash, error=error, finished_at=at
            )
        ).rowcount
        return bool(done)

    def assigned_runs(self, worker_id: str) -> list[RunRecord]:
        rows = self._c.execute(
            task_runs.select()
            .where(task_runs.c.worker_id == worker_id, task_runs.c.state == "assigned")
            .order_by(task_runs.c.created_at, task_runs.c.id)
        )
        return [_run(r) for r in rows]

    def load(self) -> dict[str, int]:
        rows = self._c.execute(
            sa.select(task_runs.c.device_id, sa.func.count())
            .where(task_runs.c.state == "assigned")
            .group_by(task_runs.c.device_id)
        )
        return {r[0]: int(r[1]) for r in rows}

    def note_address(self, worker_id: str, address: str, at: float) -> None:
        row = worker_addresses.c
        known = self._c.execute(sa.select(row.address).where(row.worker_id == worker_id)).first()
        if known is None:
            values = {"worker_id": worker_id, "address": address, "seen_at": at}
            self._c.execute(worker_addresses.insert().values(**values))
        elif known.address != address:
            self._c.execute(
                worker_addresses.update()
                .where(row.worker_id == worker_id)
                .values(address=address, seen_at=at)
            )

    def addresses(self, worker_ids: Sequence[str]) -> dict[str, str]:
        if not worker_ids:
            return {}
        row = worker_addresses.c
        rows = self._c.execute(
            sa.select(row.worker_id, row.address).where(row.worker_id.in_(list(worker_ids)))
        )
        return {r.worker_id: r.address for r in rows}
