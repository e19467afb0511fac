"""The agent's loops: register, heartbeat, long-poll for lease changes, and reconcile.

Reconciliation is level-triggered: each answer from the coordinator lists the leases this
worker should be running; the agent brings up the ones it lacks, tears down the ones it runs
but should not, and reports each member's state until the coordinator has it. Running the
same answer twice changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

import gpupool
from gpupool.agent.devices import total_memory_mb
from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.agent.mesh.bandwidth import BandwidthMeter
from gpupool.agent.mesh.egress import DNS as EGRESS_DNS
from gpupool.agent.mesh.egress import egress_available
from gpupool.agent.mesh.leasenet import netns_of_interface
from gpupool.agent.mesh.manager import MeshManager
from gpupool.agent.mesh.netprobe import NetProbe
from gpupool.agent.proof.challenger import Challenger
from gpupool.agent.proof.prover import Prover
from gpupool.agent.ray.node import RayNodes
from gpupool.agent.sandbox.cgroup import Sandbox, SandboxError, Sandboxes
from gpupool.agent.sandbox.container import Containers, ContainerSpec, lease_uid, uids_in_use
from gpupool.agent.sandbox.cryptdisk import CryptDiskError
from gpupool.agent.sandbox.disks import LeaseDisks
from gpupool.agent.sandbox.docker import PATH_PREFIX, DockerContainers, DockerSpec
from gpupool.agent.sandbox.gpus import GpuBinding, GpuBindingError
from gpupool.agent.sandbox.limits import lease_memory_bytes
from gpupool.agent.settings import AgentSettings
from gpupool.agent.state import AgentState, LeaseRecord
from gpupool.crypto.identity import Identity
from gpupool.domain.leases import MemberState
from gpupool.domain.models import DeviceKind, DeviceSpec, device_id
from gpupool.domain.money import format_micros
from gpupool.wire import models as w

log = logging.getLogger("gpupool.agent")

RETRY_SECONDS = 2.0
LEASE_PIDS_MAX = 4096  # a lease's processes and threads on this member (Ray takes ~200)


class FatalAgentError(Exception):
    """The agent cannot go on (for example, the coordinator refuses its supplier key)."""


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        identity: Identity,
        link: CoordinatorLink,
        sandboxes: Sandboxes,
        devices: list[DeviceSpec],
        state: AgentState,
        prover: Prover | None = None,
        challenger: Challenger | None = None,
        netprobe: NetProbe | None = None,
        bandwidth: BandwidthMeter | None = None,
        ray: RayNodes | None = None,
        mesh: MeshManager | None = None,
        containers: Containers | None = None,
        disks: LeaseDisks | None = None,
        docker: DockerContainers | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.link = link
        self.sandboxes = sandboxes
        self.devices = devices
        self.state = state
        self.prover = prover
        self.challenger = challenger
        self.netprobe = netprobe
        self.bandwidth = bandwidth
        self.ray = ray  # None: leases run without Ray (members are ready once sandboxed)
        self.mesh = mesh
        self.containers = containers  # None: no bwrap here, leases run in a cgroup only
        # the GPU device nodes and environment of a lease's GPUs (sandbox/gpus.py, main.py)
        self.gpu_binding: Callable[[Sequence[DeviceSpec]], GpuBinding] | None = None
        self.disks = disks or LeaseDisks(
            settings.state_dir, identity.worker_id, settings.encrypted_disk
        )
        self.docker = docker  # None: no Docker engine answered (image bookings fail)
        self.running: dict[str, Sandbox] = {}
        self._egress_failed: set[str] = set()  # reported failed once, not again each poll
        self.version = -1
        self.interval = settings.heartbeat_seconds or 10.0
        self._lock = threading.RLock()  # re-entered: teardown takes a final sample

    def snapshot(self) -> dict[str, tuple[Sandbox, list[str]]]:
        """The running leases with their devices on this worker (for the prover's thread)."""
        with self._lock:
            return {
                lease_id: (sandbox, list(self.state.leases[lease_id].devices))
                for lease_id, sandbox in self.running.items()
                if lease_id in self.state.leases
            }

    # start-up -------------------------------------------------------------------------

    def adopt(self) -> None:
        """Re-attach the sandboxes of leases recorded before a restart."""
        for lease_id, record in list(self.state.leases.items()):
            sandbox: Sandbox | None
            if record.sandbox.startswith(PATH_PREFIX):
                sandbox = self.docker.attach(lease_id, record.sandbox) if self.docker else None
            elif self.containers is not None:
                sandbox = self.containers.attach(lease_id, record.sandbox)
            else:
                sandbox = self.sandboxes.attach(lease_id, record.sandbox)
            if sandbox is None:
                log.warning("event=lease_sandbox_lost lease=%s", lease_id)
                self._destroy_disk(lease_id)
                if self.ray is not None:
                    self.ray.cleanup(lease_id)  # its Ray files and scratch key go too
                del self.state.leases[lease_id]
                self.state.unreported.update((lease_id, d) for d in record.devices)
            else:
                self.running[lease_id] = sandbox
                if self.disks.adopt(lease_id) is None:
                    log.warning("event=lease_disk_lost lease=%s", lease_id)
                if self.ray is not None:
                    self.ray.adopt(lease_id, sandbox)
                log.info("event=lease_adopted lease=%s sandbox=%s", lease_id, sandbox.path)
        # containers first: their cgroups lie inside the lease cgroups looked at next
        strays: list[Callable[[], list[Sandbox]]] = [
            lambda: list(self.docker.leftovers(set(self.state.leases))) if self.docker else [],
            lambda: self.sandboxes.leftovers(set(self.state.leases)),
        ]
        for find in strays:
            for stray in find():
                log.warning("event=stray_sandbox_removed sandbox=%s", stray.path)
                stray.destroy()
        self.state.save()
        if self.mesh is not None:
            self.mesh.adopt(set(self.state.leases))

    @property
    def offers_egress(self) -> bool:
        """Internet egress for leases that book it (docs/mesh.md): the supplier's choice,
        and only where each lease has a sealed namespace to give it in."""
        return (
            self.settings.egress
            and self.mesh is not None
            and self.mesh.sealed
            and egress_available() is None
        )

    def _sync_mesh(self) -> None:
        """The mesh of every running lease; a lease whose booked egress could not be
        given fails (it does not run on without the way out it paid for)."""
        if self.mesh is None:
            return
        egress = frozenset(
            k for k, r in self.state.leases.items() if r.egress and k in self.running
        )
        self.mesh.sync(set(self.running), egress)
        for lease_id in sorted(egress - self._egress_failed):
            problem = self.mesh.egress_problem(lease_id)
            if problem is not None:
                self._egress_failed.add(lease_id)
                for device in self.state.leases[lease_id].devices:
                    self._report(lease_id, device, MemberState.FAILED, problem)

    def overlay_address(self, lease_id: str) -> str | None:
        """This worker's overlay IPv4 in the lease's mesh (bind lease services there), or
        None where the mesh is off or not up yet (use the ordinary addresses then)."""
        return self.mesh.overlay_address(lease_id) if self.mesh is not None else None

    @property
    def sandbox_kind(self) -> str:
        """What the registration says (placement sends image bookings to `+docker`)."""
        if self.docker is not None and self.settings.container_engine == "docker":
            return self.docker.kind
        own = self.containers.kind if self.containers is not None else self.sandboxes.kind
        return own + ("+docker" if self.docker is not None else "")

    def memory_limit(self, local_devices: Sequence[str]) -> int:
        """The member's memory limit: its devices' share of this machine (limits.py)."""
        mine = [d for d in self.devices if device_id(self.identity.worker_id, d.local_name)
                in local_devices]  # fmt: skip
        gpus = sum(d.kind is DeviceKind.GPU for d in self.devices)
        leased = [(d.kind is DeviceKind.GPU, d.memory_mb) for d in mine]
        return lease_memory_bytes(leased, gpus, total_memory_mb())

    def _sealed(self, lease_id: str, local_devices: Sequence[str]) -> tuple[GpuBinding | None, int]:
        """The lease's GPU binding and uid, its disk made and handed to that uid."""
        gpus = [
            d
            for d in self.devices
            if d.kind is DeviceKind.GPU
            and f"{self.identity.worker_id}:{d.local_name}" in local_devices
        ]
        binding = self.gpu_binding(gpus) if gpus and self.gpu_binding is not None else None
        uid = lease_uid(lease_id, uids_in_use())
        self.disks.create(lease_id, (uid, uid))
        return binding, uid

    def uses_docker(self, a: w.AssignmentOut) -> bool:
        """Docker for a lease that names an image, and for all where the supplier says so;
        SandboxError for an image this agent cannot run."""
        if a.image is not None and self.docker is None:
            raise SandboxError(f"image {a.image}: this worker has no Docker engine")
        return self.docker is not None and (
            a.image is not None or self.settings.container_engine == "docker"
        )

    def docker_spec(self, a: w.AssignmentOut, cores: Sequence[int]) -> DockerSpec:
        """The lease's Docker container: as for `container_spec`, and in a network
        namespace of its own that the mesh adopts as the lease's (no mesh: the host's)."""
        binding, uid = self._sealed(a.lease_id, a.local_devices)
        mesh = self.mesh
        sealed = mesh is not None and mesh.sealed and mesh.unavailable is None
        return DockerSpec(
            a.lease_id,
            self.identity.worker_id,
            self.disks.paths(a.lease_id)[1],
            uid,
            uid,
            image=a.image,
            netns_name=netns_of_interface(mesh.interface_name(a.lease_id))
            if mesh is not None and sealed
            else None,
            device_nodes=binding.device_nodes if binding else (),
            gpu_uuids=binding.uuids if binding else (),
            env=binding.env if binding else {},
            pids_max=LEASE_PIDS_MAX,
            memory_bytes=self.memory_limit(a.local_devices),
            cores=tuple(cores),
            dns=(EGRESS_DNS,) if a.egress else (),  # slirp4netns' forwarder (mesh/egress.py)
        )

    def container_spec(
        self, lease_id: str, local_devices: Sequence[str] = (), egress: bool = False
    ) -> ContainerSpec:
        """The lease's container, as a uid of its own: its one writable folder is the
        encrypted disk, mounted at the lease's Ray temp dir (sandbox/disks.py). Until Ray
        starts in the lease's own network namespace (ray/node.py), the container shares the
        agent's network: a lease without the mesh talks over the host's."""
        binding, uid = self._sealed(lease_id, local_devices)
        return ContainerSpec(
            lease_id,
            self.disks.paths(lease_id)[1],
            uid,
            uid,
            share_host_network=True,
            device_nodes=binding.device_nodes if binding else (),  # only the leased GPUs
            env=binding.env if binding else {},
            pids_max=LEASE_PIDS_MAX,
            memory_bytes=self.memory_limit(local_devices),
            resolv_conf=self._egress_resolv_conf(lease_id) if egress else None,
        )

    def _egress_resolv_conf(self, lease_id: str) -> Path:
        """The lease's /etc/resolv.conf with egress: slirp4netns' DNS forwarder, the one
        resolver it can reach (the host's may be on loopback or the LAN)."""
        path = self.settings.state_dir / "egress" / f"{lease_id}.resolv.conf"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(f"nameserver {EGRESS_DNS}\n")
        path.chmod(0o644)
        return path

    def _destroy_disk(self, lease_id: str) -> bool:
        try:
            self.disks.destroy(lease_id)
            return True
        except CryptDiskError as exc:
            log.error("event=lease_disk_teardown_failed lease=%s reason=%s", lease_id, exc)
            return False

    def registration(self) -> w.WorkerRegister:
        s = self.settings
        return w.WorkerRegister(
            public_key=self.identity.public_key_b64,
            hostname=s.hostname,
            location=w.LocationIn(latitude=s.latitude, longitude=s.longitude, region=s.region),
            datacenter_tier=s.datacenter_tier,
            soc2_claimed=s.soc2_claimed,
            devices=[
                w.DeviceSpecIn(
                    local_name=d.local_name,
                    kind=d.kind,
                    model=d.model,
                    memory_mb=d.memory_mb,
                    price_per_hour=Decimal(format_micros(d.price_micros_per_hour)),
                    uuid=d.uuid,
                    cores=list(d.cores),
                    driver_version=d.driver_version,
                    cuda_version=d.cuda_version,
                    pci_bus_id=d.pci_bus_id,
                )
                for d in self.devices
            ],
            agent_version=gpupool.__version__,
            sandbox=self.sandbox_kind + ("+egress" if self.offers_egress else ""),
        )

    def register(self, stop: threading.Event) -> w.WorkerOut | None:
        """Register, retrying while the coordinator is unreachable or failing."""
        while not stop.is_set():
            try:
                worker = self.link.register(self.registration())
            except LinkError as exc:
                if exc.status in (401, 403, 422):
                    raise FatalAgentError(f"the coordinator refused to register: {exc}") from exc
                log.warning("event=register_retry reason=%s", exc.message)
                stop.wait(RETRY_SECONDS)
                continue
            log.info(
                "event=registered worker=%s devices=%d sandbox=%s",
                worker.id,
                len(worker.devices),
                self.sandbox_kind,
            )
            return worker
        return None

    # loops ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.adopt()
        if self.register(stop) is None:
            return
        loops = [threading.Thread(target=self._poll_loop, args=(stop,), name="lease-poll")]
        if self.prover is not None:
            loops.append(
                threading.Thread(target=self.prover.run_sampler, args=(stop,), name="sampler")
            )
            loops.append(
                threading.Thread(target=self.prover.run_sender, args=(stop,), name="sender")
            )
        if self.challenger is not None:
            loops.append(
                threading.Thread(target=self.challenger.run, args=(stop,), name="challenges")
            )
        if self.bandwidth is not None:
            loops.append(
                threading.Thread(target=self.bandwidth.run, args=(stop,), name="bandwidth")
            )
        for loop in loops:
            loop.daemon = True
            loop.start()
        if self.netprobe is not None:
            try:
                loops.extend(self.netprobe.start(stop))
            except OSError as exc:
                log.warning("event=probe_unavailable reason=%s", exc)
                self.netprobe = None
        try:
            while not stop.is_set():
                try:
                    report = self.netprobe.report() if self.netprobe is not None else None
                    self.apply(self.link.heartbeat(report))
                except LinkError as exc:
                    self._on_link_error(exc, stop)
                stop.wait(self.interval)
        finally:
            for loop in loops:
                loop.join(timeout=1)
            if self.settings.teardown_on_exit:
                self.teardown_all()
            if not self.running:
                self.sandboxes.release()
            if self.mesh is not None:
                self.mesh.close()

    def _poll_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.apply(self.link.leases(self.version, self.settings.long_poll_seconds))
            except LinkError as exc:
                self._on_link_error(exc, stop)
                stop.wait(RETRY_SECONDS)

    def _on_link_error(self, exc: LinkError, stop: threading.Event) -> None:
        log.warning("event=coordinator_error status=%d reason=%s", exc.status, exc.message)
        if exc.status == 401 and "unknown worker" in exc.message:
            self.register(stop)  # the coordinator lost us (a fresh database): register again

    # reconciliation ----------------------------------------------------------------------

    def apply(self, answer: w.AssignmentsOut) -> None:
        with self._lock:
            self.version = answer.lease_version
            if self.challenger is not None:
                self.challenger.offer(answer.challenges)
            if self.netprobe is not None:
                self.netprobe.offer(answer.probe_peers)
            self.interval = self.settings.heartbeat_seconds or answer.heartbeat_seconds
            desired = {a.lease_id: a for a in answer.leases}
            for lease_id in [x for x in self.running if x not in desired]:
                self._tear_down(lease_id)
            self._flush_releases()
            for assignment in desired.values():
                if assignment.lease_id not in self.running:
                    self._bring_up(assignment)
                else:
                    self._report_ready(assignment)
            self._sync_mesh()

    def _bring_up(self, a: w.AssignmentOut) -> None:
        log.info("event=lease_start lease=%s devices=%s", a.lease_id, ",".join(a.local_devices))
        for device in a.local_devices:
            self._report(a.lease_id, device, MemberState.PROVISIONING)
        if a.egress and not self.offers_egress:
            for device in a.local_devices:
                self._report(a.lease_id, device, MemberState.FAILED, "no egress on this worker")
            return
        cores = sorted(
            {
                core
                for d in self.devices
                if f"{self.identity.worker_id}:{d.local_name}" in a.local_devices
                for core in d.cores
            }
        )
        try:
            if self.uses_docker(a):
                assert self.docker is not None
                sandbox: Sandbox = self.docker.create(self.docker_spec(a, cores))
            elif self.containers is not None:
                sandbox = self.containers.create(
                    self.container_spec(a.lease_id, a.local_devices, a.egress), cores
                )
            else:  # no container here: the lease runs as the agent's user, on its disk still
                self.disks.create(a.lease_id)
                sandbox = self.sandboxes.create(a.lease_id, cores)
        except (SandboxError, CryptDiskError, GpuBindingError, OSError) as exc:
            log.error("event=lease_sandbox_failed lease=%s reason=%s", a.lease_id, exc)
            self._destroy_disk(a.lease_id)
            what = "disk" if isinstance(exc, CryptDiskError) else "sandbox"
            for device in a.local_devices:
                self._report(a.lease_id, device, MemberState.FAILED, f"{what}: {exc}")
            return
        self.running[a.lease_id] = sandbox
        self.state.leases[a.lease_id] = LeaseRecord(sandbox.path, list(a.local_devices), a.egress)
        self.state.save()
        if self.prover is not None:
            self.prover.sample(only_lease=a.lease_id)  # coverage starts at once
        if self.ray is not None:
            self.ray.start(a, sandbox)  # reports the members ready once Ray has joined
        self._report_ready(a)

    def _report_ready(self, a: w.AssignmentOut) -> None:
        if self.ray is not None and not self.ray.joined(a.lease_id):
            return
        mine = set(a.local_devices)
        for member in a.members:
            if member.device_id in mine and member.state is not MemberState.READY:
                self._report(a.lease_id, member.device_id, MemberState.READY)

    def _tear_down(self, lease_id: str) -> None:
        sandbox = self.running[lease_id]
        if self.prover is not None:
            try:
                self.prover.finish(lease_id)
            except Exception:  # the proof must never keep a lease from ending
                log.exception("event=final_sample_failed lease=%s", lease_id)
        if self.ray is not None:
            self.ray.stop(lease_id)
        try:
            sandbox.destroy()
        except SandboxError as exc:
            log.error("event=lease_teardown_failed lease=%s reason=%s", lease_id, exc)
            return  # try again on the next answer
        self.sandboxes.repartition()  # the lease's cores go back to the system set
        if not self._destroy_disk(lease_id):  # its key and ciphertext, before Ray's files
            return  # try again on the next answer
        if self.ray is not None:
            self.ray.cleanup(lease_id)  # after the sandbox: no Ray process holds its files
        del self.running[lease_id]
        self._sync_mesh()  # its interface, namespace and forwarders, before "released"
        if self.prover is not None:
            self.prover.recorder.forget(lease_id)
        (self.settings.state_dir / "egress" / f"{lease_id}.resolv.conf").unlink(missing_ok=True)
        self._egress_failed.discard(lease_id)
        record = self.state.leases.pop(lease_id, None)
        self.state.unreported.update((lease_id, d) for d in (record.devices if record else []))
        self.state.save()
        log.info("event=lease_end lease=%s", lease_id)

    def _flush_releases(self) -> None:
        for lease_id, device in sorted(self.state.unreported):
            try:
                self.link.report(lease_id, device, MemberState.RELEASED.value)
            except LinkError as exc:
                if exc.status not in (404, 409):
                    continue  # keep it; report again later
            self.state.unreported.discard((lease_id, device))
        self.state.save()

    def _report(self, lease_id: str, device: str, state: MemberState, reason: str = "") -> None:
        try:
            self.link.report(lease_id, device, state.value, reason)
        except LinkError as exc:
            log.warning(
                "event=report_failed lease=%s device=%s state=%s reason=%s",
                lease_id,
                device,
                state,
                exc.message,
            )

    def teardown_all(self) -> None:
        with self._lock:
            for lease_id in list(self.running):
                self._tear_down(lease_id)
            self._sync_mesh()
            self._flush_releases()
