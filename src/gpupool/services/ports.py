"""The interfaces services need from the outside world, and the real clock.

A service opens one transaction per use case with `Database.transaction()`; everything it
reads and writes goes through the repositories of that transaction and is committed when the
block ends without an exception (so an acknowledged write is a committed write). The
coordinator's storage adapter implements these over SQLAlchemy; tests use the same adapter on
SQLite, and `gpupool.testing.ManualClock` for time.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gpupool.crypto.ledger import Entry
from gpupool.domain.coordinates import Coordinate
from gpupool.domain.leases import Lease, LeaseMember, LeaseState, MemberState
from gpupool.domain.mesh import PathState
from gpupool.domain.models import (
    Account,
    Cluster,
    Device,
    DeviceSpec,
    DeviceStatus,
    Worker,
)


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class AccountRepo(Protocol):
    def add(self, account: Account, key_hash: str) -> None: ...
    def by_key_hash(self, key_hash: str) -> Account | None: ...
    def get(self, account_id: str) -> Account | None: ...
    def set_soc2_verified(self, account_id: str, verified: bool) -> None: ...


class WorkerRepo(Protocol):
    def get(self, worker_id: str) -> Worker | None: ...
    def save(self, worker: Worker) -> None:
        """Insert the worker or replace its registration facts."""
        ...

    def set_devices(self, worker_id: str, specs: Sequence[DeviceSpec]) -> None:
        """Make the worker's devices these: add new ones (idle), update known ones, and mark
        the ones it no longer reports `down`."""
        ...

    def heartbeat(self, worker_id: str, now: float) -> None:
        """Record a heartbeat; a worker that was down is up again, and its devices that were
        down because of that are idle again."""
        ...

    def report_network(
        self,
        worker_id: str,
        at: float,
        coordinate: Coordinate | None,
        probe_host: str | None,
        probe_port: int | None,
    ) -> None:
        """Store the worker's network coordinate (when given) and where it answers probes."""
        ...

    def report_bandwidth(
        self, worker_id: str, upload_mbps: float, download_mbps: float, tier: int
    ) -> None:
        """Store the worker's measured bandwidth and the connectivity tier it earns."""
        ...

    def probe_targets(self, worker_id: str) -> list[tuple[str, str, int]]:
        """(worker id, host, port) of every other up worker that answers RTT probes."""
        ...

    def mark_down_before(self, cutoff: float) -> list[str]:
        """Workers whose last heartbeat is older than `cutoff` go down with their idle
        devices; returns their ids."""
        ...

    def list_all(self, supplier_id: str | None = None) -> list[Worker]: ...
    def devices(self, worker_id: str | None = None) -> list[Device]: ...
    def set_verification(
        self,
        device_id: str,
        *,
        verified: bool,
        at: float,
        status: DeviceStatus | None = None,
        flops: float | None = None,
    ) -> None:
        """Record a capability challenge's effect on a device."""
        ...

    def bump_lease_version(self, worker_ids: Sequence[str]) -> None: ...
    def lease_version(self, worker_id: str) -> int: ...


class LeaseRepo(Protocol):
    def add(self, cluster: Cluster, lease: Lease, members: Sequence[LeaseMember]) -> None: ...
    def claim_devices(self, lease_id: str, device_ids: Sequence[str]) -> bool:
        """Mark the devices leased to `lease_id` if every one is still idle; else change
        nothing and return False (another booking won the race)."""
        ...

    def release_device(self, device_id: str, lease_id: str) -> None:
        """Return a device that `lease_id` held to the pool (idle, or down if its worker is)."""
        ...

    def cluster(self, cluster_id: str) -> Cluster | None: ...
    def clusters(self, renter_id: str) -> list[Cluster]: ...
    def lease(self, lease_id: str) -> Lease | None: ...
    def lease_for_update(self, lease_id: str) -> Lease | None:
        """The lease, locked against concurrent changes until the transaction ends."""
        ...

    def lease_of_cluster(self, cluster_id: str) -> Lease: ...
    def members(self, lease_id: str, worker_id: str | None = None) -> list[LeaseMember]:
        """The lease's members, or only those of one worker."""
        ...

    def save_lease(self, lease: Lease) -> None: ...
    def set_member(
        self, lease_id: str, device_id: str, state: MemberState, reason: str, now: float
    ) -> None: ...
    def leases_of_worker(self, worker_id: str, states: frozenset[LeaseState]) -> list[Lease]: ...
    def leases_in(self, states: frozenset[LeaseState]) -> list[Lease]: ...
    def add_event(self, lease_id: str, at: float, state: LeaseState, note: str) -> None: ...
    def events(self, lease_id: str) -> list[tuple[float, LeaseState, str]]: ...


class NonceRepo(Protocol):
    def remember(self, worker_id: str, nonce: str, at: float) -> bool:
        """Store the pair; False if it was already stored (a replay)."""
        ...

    def forget_before(self, cutoff: float) -> int: ...


@dataclass(frozen=True, slots=True)
class StoredHead:
    seq: int
    hash: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class HeadMove:
    lease_id: str
    device_id: str
    previous: StoredHead | None
    head: StoredHead


@dataclass(frozen=True, slots=True)
class StoredSample:
    seq: int
    time_ms: int
    hash: str
    body: str  # canonical JSON, exactly as hashed


@dataclass(frozen=True, slots=True)
class StoredBatch:
    last_seq: int
    last_hash: str
    signature: str  # base64 Ed25519 over crypto.timelock.batch_message
    received_ms: int


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    body: str  # canonical JSON, exactly as signed
    signature: str
    issued_at: float


@dataclass(frozen=True, slots=True)
class ChallengeRecord:
    id: str
    device_id: str
    worker_id: str
    n: int
    seed_a: str
    seed_b: str
    state: str  # issued -> [probing ->] answered -> passed | failed | wrong
    issued_at: float
    root: str | None = None
    rows: tuple[int, ...] | None = None
    compute_seconds: float | None = None
    flops: float | None = None
    reason: str = ""
    answered_at: float | None = None
    finished_at: float | None = None
    steps: int = 1  # chained multiplications, sized from the claimed model
    delivered_at: float | None = None  # the coordinator's clock when the agent first got it
    lease_id: str | None = None  # a spot check during this lease; None: an idle device's
    held: int = 0  # states the memory sketch covers; 0: no memory phase
    memory_seed: str | None = None  # sent once the root is in
    probed_at: float | None = None  # the coordinator's clock when the seed went out
    sketch: tuple[int, ...] | None = None  # the agent's S at `rows`, kept for the check


class ProofRepo(Protocol):
    def head(self, lease_id: str, device_id: str) -> StoredHead | None: ...
    def heads(
        self, lease_id: str, device_ids: Collection[str] | None = None
    ) -> dict[str, StoredHead]:
        """Chain heads by device, of every device of the lease or only of `device_ids`."""
        ...

    def move_heads(self, moves: Sequence[HeadMove]) -> bool:
        """Move chain heads, in order, each from its `previous` (None: start the chain);
        False if any had moved meanwhile (the caller must then roll back)."""
        ...

    def add_samples(self, rows: Sequence[tuple[str, str, StoredSample]]) -> None: ...
    def add_batches(self, batches: Sequence[tuple[str, str, StoredBatch]]) -> None: ...

    def samples(self, lease_id: str) -> list[tuple[str, StoredSample]]: ...
    def batches(self, lease_id: str) -> list[tuple[str, StoredBatch]]: ...
    def certificate(self, lease_id: str) -> StoredCertificate | None: ...
    def add_certificate(self, lease_id: str, cert: StoredCertificate) -> None: ...
    def model_stats(self, model: str) -> dict[str, Any] | None: ...
    def save_model_stats(self, model: str, body: dict[str, Any], at: float) -> None: ...
    def add_challenge(self, record: ChallengeRecord) -> None: ...
    def save_challenge(self, record: ChallengeRecord) -> None: ...
    def challenge(self, challenge_id: str) -> ChallengeRecord | None: ...
    def challenges(
        self,
        *,
        worker_id: str | None = None,
        states: Sequence[str] = (),
        lease_id: str | None = None,
    ) -> list[ChallengeRecord]: ...
    def passed_flops(self, model: str, limit: int = 50) -> list[float]: ...


@dataclass(frozen=True, slots=True)
class RayNodeRecord:
    """A worker's Ray node on one lease, as its agent last reported it (docs/ray.md)."""

    lease_id: str
    worker_id: str
    role: str
    state: str
    address: str
    mesh: bool
    node_id: str | None
    gcs_address: str | None
    dashboard_url: str | None
    reason: str
    updated_at: float


class RayRepo(Protocol):
    def save(self, node: RayNodeRecord) -> None:
        """Insert or replace the node of (lease, worker)."""
        ...

    def nodes(self, lease_id: str) -> list[RayNodeRecord]: ...


@dataclass(frozen=True, slots=True)
class MeshNode:
    """An overlay address with the WireGuard key that owns it (a worker or a renter's
    client of one cluster)."""

    id: str
    kind: str  # worker | client
    address: str
    public_key: str
    cluster_id: str | None = None


class MeshRepo(Protocol):
    def node(self, node_id: str) -> MeshNode | None: ...
    def nodes(self, node_ids: Collection[str]) -> list[MeshNode]: ...
    def node_with_key(self, public_key: str) -> MeshNode | None: ...
    def addresses(self) -> list[str]:
        """Every overlay address ever allocated."""
        ...

    def add_node(self, node: MeshNode, at: float) -> bool:
        """Insert; False when the address or key is taken meanwhile (nothing changes)."""
        ...

    def set_key(self, node_id: str, public_key: str, at: float) -> None: ...
    def endpoints(self, lease_id: str) -> dict[str, str]: ...
    def set_endpoint(self, lease_id: str, worker_id: str, endpoint: str, at: float) -> None: ...
    def set_probes(
        self, lease_id: str, prober: str, rtts: dict[str, float | None], at: float
    ) -> None: ...
    def probes(self, lease_id: str, since: float) -> dict[tuple[str, str], float | None]: ...
    def paths(self, lease_id: str) -> dict[tuple[str, str], PathState]: ...
    def save_paths(self, lease_id: str, states: dict[tuple[str, str], PathState]) -> None: ...
    def lock_round(self, lease_id: str) -> float:
        """Lock the lease's relay round until the transaction ends; when it last ran (0:
        never)."""
        ...

    def set_round(self, lease_id: str, at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class StakeRecord:
    device_id: str
    supplier_id: str
    worker_id: str
    staked_at: float
    unstake_at: float | None


class LedgerRepo(Protocol):
    """The journal, balances, stakes and slashes (docs/ledger.md)."""

    def lock_head(self) -> tuple[int, str]:
        """The last entry's (seq, hash), locked until the transaction ends: moves are
        appended one at a time."""
        ...

    def entry(self, key: str) -> Entry | None: ...
    def append(self, entry: Entry, balances: dict[str, int]) -> None:
        """Store the entry, its postings and the new balances, and move the head to it."""
        ...

    def balances(self, accounts: Collection[str]) -> dict[str, int]: ...
    def balances_like(self, prefix: str) -> dict[str, int]:
        """Every account whose name starts with `prefix`, with its balance."""
        ...

    def entries(
        self, *, after: int = 0, limit: int | None = None, accounts: Collection[str] = ()
    ) -> list[Entry]:
        """Entries in order; with `accounts`, only those posting to one of them."""
        ...

    def unsettled_leases(self, states: Collection[str]) -> list[str]:
        """Leases in `states` that have a certificate and no settlement entry."""
        ...

    def stake(self, device_id: str) -> StakeRecord | None: ...
    def stakes(self, supplier_id: str | None = None) -> list[StakeRecord]: ...
    def save_stake(self, record: StakeRecord) -> None: ...
    def drop_stake(self, device_id: str) -> None: ...
    def add_slash(
        self,
        key: str,
        worker_id: str,
        device_id: str,
        reason: str,
        fraud: bool,
        amount: int,
        at: float,
    ) -> None: ...
    def fraud_count(self, worker_id: str) -> int: ...


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    renter_id: str
    command: str
    image: str | None
    input: bytes
    input_hash: str
    tolerance: float | None
    state: str  # queued, done, failed
    validation: str  # none, sampled, confirmed, caught, no-majority
    validator_id: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    task_id: str
    purpose: str  # job, check, third
    device_id: str | None
    worker_id: str | None
    supplier_id: str | None
    state: str  # waiting, assigned, done, failed
    output: bytes | None
    output_hash: str | None
    error: str
    created_at: float
    finished_at: float | None


class TaskRepo(Protocol):
    """Protocol-mode jobs and their runs."""

    def add_task(self, task: TaskRecord) -> None: ...
    def task(self, task_id: str) -> TaskRecord | None: ...
    def tasks_of(self, renter_id: str) -> list[TaskRecord]: ...
    def tasks_by_id(self, task_ids: Sequence[str]) -> list[TaskRecord]: ...
    def set_task(
        self, task_id: str, *, state: str, validation: str, validator_id: str | None
    ) -> None: ...
    def unvalidated(self, p: float) -> dict[str, float | None]:
        """Done tasks no validator has sampled and none drew with p or more yet, oldest
        first, with the largest p each was drawn with (None: never)."""
        ...

    def claim_validation(
        self, task_id: str, validation: str, validator_id: str | None, p: float
    ) -> bool:
        """Mark a done, unsampled task drawn with p; False if another validator got to it
        first."""
        ...

    def overdue_runs(self, before: float) -> list[RunRecord]:
        """Runs assigned before `before` and still without a result."""
        ...

    def add_run(self, run: RunRecord) -> None: ...
    def run(self, run_id: str) -> RunRecord | None: ...
    def runs(self, task_id: str) -> list[RunRecord]: ...
    def waiting_runs(self) -> list[RunRecord]: ...
    def assign_run(
        self, run_id: str, device_id: str, worker_id: str, supplier_id: str, at: float
    ) -> None: ...
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
        """Record an assigned run's result; False if it was not assigned (a resend)."""
        ...

    def assigned_runs(self, worker_id: str) -> list[RunRecord]: ...
    def load(self) -> dict[str, int]:
        """Assigned runs per device."""
        ...

    def note_address(self, worker_id: str, address: str, at: float) -> None:
        """The address a worker was last seen fetching its runs from."""
        ...

    def addresses(self, worker_ids: Sequence[str]) -> dict[str, str]: ...


class Transaction(Protocol):
    @property
    def accounts(self) -> AccountRepo: ...
    @property
    def workers(self) -> WorkerRepo: ...
    @property
    def leases(self) -> LeaseRepo: ...
    @property
    def nonces(self) -> NonceRepo: ...
    @property
    def proofs(self) -> ProofRepo: ...
    @property
    def ray(self) -> RayRepo: ...
    @property
    def mesh(self) -> MeshRepo: ...
    @property
    def ledger(self) -> LedgerRepo: ...
    @property
    def tasks(self) -> TaskRepo: ...


class Database(Protocol):
    def transaction(self) -> AbstractContextManager[Transaction]: ...
