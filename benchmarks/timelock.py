"""Proof of Time-Lock benchmarks.

    .venv/bin/python -m benchmarks.timelock verify --hours 1 --repeat 5
        time to re-verify offline one device-hour of 1 Hz samples (an exported proof folder)
    .venv/bin/python -m benchmarks.timelock ingest --agents 16 --devices 8 --seconds 20
        samples per second a real coordinator (SQLite) accepts with many agents posting at once
    .venv/bin/python -m benchmarks.timelock guard --rounds 100 --interval 1.0
        guard detection-to-kill latency for foreign processes on a leased core

Each prints its figures and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gpupool.crypto.identity import Identity, b64
from gpupool.crypto.timelock import (
    ZERO_HASH,
    batch_message,
    beacon_value,
    certificate_message,
    sample_hash,
)
from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock import certificate
from gpupool.domain.timelock.anomaly import ModelStats
from gpupool.domain.timelock.chain import HashedSample
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import DeviceProfile
from gpupool.services.proof_files import verify_folder, write_folder

EPOCH_MS = 10_000
T1 = 1_800_000_000_000


def _chain(
    worker: Identity, lease: str, device: str, count: int, secret: bytes
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    samples, batches, prev = [], [], ZERO_HASH
    for seq in range(count):
        t = T1 + 200 + seq * 1000
        number = t // EPOCH_MS
        sample = {
            "lease": lease,
            "device": device,
            "seq": seq,
            "time_ms": t,
            "beacon": number,
            "beacon_value": beacon_value(secret, number),
            "prev": prev,
            "processes": [{"pid": 4242, "name": "python", "owner": "lease"}],
            "utilization_pct": 60 + seq % 30,
            "memory_mb": 2000 + seq % 50,
            "power_mw": None,
            "temperature_c": 55,
            "violations": [],
        }
        prev = sample_hash(sample)
        samples.append(sample)
        if seq % 10 == 9 or seq == count - 1:
            signature = worker.sign(batch_message(lease, device, seq, prev))
            batches.append(
                {
                    "device_id": device,
                    "last_seq": seq,
                    "last_hash": prev,
                    "signature": b64(signature),
                }
            )
    return samples, batches


def bench_verify(hours: float, repeat: int) -> dict[str, Any]:
    coordinator, worker = Identity.generate(), Identity.generate()
    lease, device = "l-bench", f"{worker.worker_id}:cpu0"
    count = round(hours * 3600)
    samples, batches = _chain(worker, lease, device, count, b"secret")
    t_end = T1 + count * 1000
    chain = [HashedSample(Sample.from_dict(s), sample_hash(s)) for s in samples]
    result = certificate.evaluate_device(
        device,
        worker.worker_id,
        DeviceProfile(DeviceKind.CPU, "bench CPU", 65536),
        chain,
        ModelStats("bench CPU"),
        t1_ms=T1,
        t_end_ms=t_end,
        interval_ms=1000,
    )
    body = certificate.certificate_body(
        lease_id=lease,
        cluster_id="c-bench",
        devices=[result],
        t1_ms=T1,
        t_end_ms=t_end,
        beacons=certificate.beacons_used([h.sample for h in chain]),
        interval_ms=1000,
        epoch_ms=EPOCH_MS,
        max_skew_ms=2000,
        issued_at_ms=t_end + 1000,
        head_signatures={device: batches[-1]["signature"]},
    )
    body["worker_keys"] = {worker.worker_id: worker.public_key_b64}
    cert = {
        "lease_id": lease,
        "cluster_id": "c-bench",
        "body": body,
        "signature": b64(coordinator.sign(certificate_message(body))),
        "coordinator_key": coordinator.public_key_b64,
    }
    timings = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder, cert, {device: samples}, batches[-1:], body["worker_keys"])
        for _ in range(repeat):
            started = time.perf_counter()
            problems = verify_folder(folder)
            timings.append(time.perf_counter() - started)
            assert problems == [], problems
    median = statistics.median(timings) * 1000
    print(f"verify {count} samples ({hours:g} device-hour at 1 Hz): median {median:.1f} ms")
    return {"samples": count, "verify_median_ms": round(median, 1), "repeat": repeat}


def _ingest_worker(
    url: str, supplier_key: str, agents: int, devices: int, start: Any, stop_at: Any, out: Any
) -> None:
    """One client process: registers `agents` workers, then runs each as its own thread,
    posting signed batches as fast as the coordinator answers, one request per round (all
    its devices at once). Agents are independent machines, each with its own request in
    flight; the threads only share this process's interpreter."""
    import threading

    from gpupool.agent.link import CoordinatorLink
    from gpupool.agent.proof.challenger import Challenger
    from gpupool.wire import models as w

    sims = []
    for _ in range(agents):
        identity = Identity.generate()
        link = CoordinatorLink(url, identity, supplier_key)
        body = {
            "public_key": identity.public_key_b64,
            "hostname": "bench",
            "location": {"latitude": 0, "longitude": 0, "region": "bench"},
            "devices": [
                {
                    "local_name": f"cpu{i}",
                    "kind": "cpu",
                    "model": "bench",
                    "memory_mb": 1,
                    "price_per_hour": "0.01",
                    "cores": [0],
                }
                for i in range(devices)
            ],
            "agent_version": "bench",
            "sandbox": "none",
        }
        link.register(w.WorkerRegister.model_validate(body))
        challenger = Challenger(link)
        for c in link.heartbeat().challenges:
            challenger.solve(c)
        sims.append((identity, link))
    start.wait()
    totals: list[tuple[int, int]] = []
    threads = [
        threading.Thread(target=lambda a=agent: totals.append(_run_agent(*a, stop_at)))
        for agent in sims
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((sum(a for a, _ in totals), sum(r for _, r in totals)))


def _run_agent(identity: Identity, link: Any, stop_at: Any) -> tuple[int, int]:
    """One agent's loop: ten samples per device per request, chained, signed and sent as the
    agent's recorder does; (samples accepted, batches refused)."""
    from gpupool.agent.proof.recorder import Head, seal
    from gpupool.wire import models as w

    heads: dict[tuple[str, str], Head | None] = {}
    last_ms: dict[tuple[str, str], int] = {}
    leases = link.heartbeat().leases
    beacon = link.beacon()
    accepted = refused = 0
    while time.time() < stop_at.value:
        batches = []
        now = round(time.time() * 1000)
        for lease in leases:
            for device in lease.local_devices:
                key = (lease.lease_id, device)
                unsealed = []
                for i in range(10):
                    t = max(now - 10 + i, last_ms.get(key, 0) + 1)
                    last_ms[key] = t
                    unsealed.append(
                        {
                            "lease": lease.lease_id,
                            "device": device,
                            "time_ms": t,
                            "beacon": beacon.number,
                            "beacon_value": beacon.value,
                            "processes": [{"pid": 7, "name": "python", "owner": "lease"}],
                            "utilization_pct": 50 + i,
                            "memory_mb": 100,
                            "power_mw": None,
                            "temperature_c": None,
                            "violations": [],
                        }
                    )
                sealed, head = seal(unsealed, heads.get(key))
                signature = identity.sign(
                    batch_message(lease.lease_id, device, head.seq, head.hash)
                )
                heads[key] = head
                batches.append(
                    w.SampleBatchIn(
                        lease_id=lease.lease_id,
                        device_id=device,
                        samples=sealed,
                        signature=b64(signature),
                    )
                )
        answer = link.send_samples(w.SamplesIn(batches=batches))
        beacon = answer.beacon  # as the agent does: the last answer's beacon
        for r in answer.results:
            accepted += r.accepted
            refused += r.refused is not None
    return accepted, refused


def bench_ingest(agents: int, devices: int, seconds: float, processes: int) -> dict[str, Any]:
    import multiprocessing as mp

    from gpupool.client import Client
    from gpupool.localnet import LocalNetwork

    with tempfile.TemporaryDirectory() as tmp:
        net = LocalNetwork(Path(tmp), agents=0, challenge_size=16, heartbeat_seconds=60)
        with net:
            with net.admin() as admin:
                supplier = admin.create_account("supplier", "bench").api_key
            renter = net.create_renter("bench", funds="1000000")
            ctx = mp.get_context("fork")
            start, out = ctx.Event(), ctx.Queue()
            stop_at = ctx.Value("d", 0.0)
            per = [agents // processes + (i < agents % processes) for i in range(processes)]
            procs = [
                ctx.Process(
                    target=_ingest_worker,
                    args=(net.url, supplier, n, devices, start, stop_at, out),
                )
                for n in per
                if n
            ]
            for p in procs:
                p.start()
            net.wait_workers_up(agents, timeout=120)
            net.stake_devices(supplier, funds="1000000")
            with Client(net.url, renter) as gp:
                gp.create_cluster(
                    devices=agents * devices, kind="cpu", hours=1, max_price_per_hour="1"
                )
            stop_at.value = time.time() + seconds
            started = time.time()
            start.set()
            results = [out.get(timeout=seconds + 120) for _ in procs]
            elapsed = time.time() - started
            for p in procs:
                p.join()
    accepted = sum(a for a, _ in results)
    refused = sum(r for _, r in results)
    rate = accepted / elapsed
    print(
        f"{agents} agents x {devices} devices, {processes} client processes, {elapsed:.1f} s: "
        f"{accepted} samples accepted ({rate:,.0f}/s), {refused} batches refused"
    )
    return {
        "agents": agents,
        "devices_per_agent": devices,
        "seconds": round(elapsed, 1),
        "accepted": accepted,
        "refused_batches": refused,
        "samples_per_second": round(rate),
    }


def bench_guard(rounds: int, interval: float) -> dict[str, Any]:
    """A guard loop scanning every `interval` s over a real lease cgroup held to one core,
    while foreign processes pinned to that core start at random moments."""
    import os
    import random
    import subprocess
    import threading

    from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root, find_cpuset_root
    from gpupool.agent.sandbox.guard import DeviceView, Guard, LeaseView

    core = sorted(os.sched_getaffinity(0))[-1]
    boxes = Sandboxes(f"w-bench{os.getpid()}", find_cgroup2_root(), find_cpuset_root())
    box = boxes.create("l-bench", [core])
    view = LeaseView("l-bench", box, [DeviceView("w-b:cpu", "cpu", DeviceKind.CPU, (core,))])
    guard = Guard(agent_pid=-1)  # the intruders are this process's children: not helpers
    stop = threading.Event()
    scans: list[float] = []

    def loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            guard.scan([view])
            scans.append(time.perf_counter() - started)
            stop.wait(max(0.0, interval - scans[-1]))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    latencies = []
    rng = random.Random(1)
    try:
        for _ in range(rounds):
            time.sleep(rng.uniform(0, interval))
            started = time.perf_counter()
            intruder = subprocess.Popen(["taskset", "-c", str(core), "sleep", "600"])
            intruder.wait(timeout=interval * 5)
            latencies.append(time.perf_counter() - started)
    finally:
        stop.set()
        thread.join()
        box.destroy()
        if boxes.root is not None:
            boxes.root.rmdir()
        if boxes.cpuset_root is not None and boxes.root is not None:
            leftover = boxes.cpuset_root / boxes.root.name
            if leftover.exists():
                leftover.rmdir()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    result = {
        "rounds": rounds,
        "interval_s": interval,
        "start_to_kill_median_ms": round(statistics.median(latencies) * 1000, 1),
        "start_to_kill_p99_ms": round(p99 * 1000, 1),
        "scan_median_ms": round(statistics.median(scans) * 1000, 2),
        "processes_on_machine": len(os.listdir("/proc")),
    }
    print(
        f"guard at {interval:g} s: start-to-kill median {result['start_to_kill_median_ms']} ms, "
        f"p99 {result['start_to_kill_p99_ms']} ms; one scan {result['scan_median_ms']} ms"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--hours", type=float, default=1.0)
    v.add_argument("--repeat", type=int, default=5)
    i = sub.add_parser("ingest")
    i.add_argument("--agents", type=int, default=16)
    i.add_argument("--devices", type=int, default=8)
    i.add_argument("--seconds", type=float, default=20.0)
    i.add_argument("--processes", type=int, default=4)
    g = sub.add_parser("guard")
    g.add_argument("--rounds", type=int, default=100)
    g.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    if args.what == "guard":
        print(json.dumps(bench_guard(args.rounds, args.interval)))
    elif args.what == "verify":
        print(json.dumps(bench_verify(args.hours, args.repeat)))
    elif args.what == "ingest":
        print(json.dumps(bench_ingest(args.agents, args.devices, args.seconds, args.processes)))


if __name__ == "__main__":
    main()
