"""`LocalNetwork`: start a coordinator (SQLite in a state folder) and N agents as separate
processes, each in its own session, logging to files; stop them all, also on Ctrl-C.

Agents get their supplier key through the environment (never on the command line, where any
user could read it in the process list) and tear their leases down when stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from gpupool.client import ApiError, Client
from gpupool.crypto.apikeys import new_api_key
from gpupool.crypto.identity import load, write_secret

T = TypeVar("T")

# Where the demo's agents say they are (real places, so later placement has geography).
SITES = [
    ("eu-central", 50.11, 8.68),  # Frankfurt
    ("eu-west", 52.37, 4.90),  # Amsterdam
    ("us-east", 39.04, -77.49),  # Ashburn
    ("us-west", 37.34, -121.89),  # San Jose
    ("ap-southeast", 1.35, 103.82),  # Singapore
]


class NetworkError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
    """Poll `check` until it returns something other than None; NetworkError on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except ApiError as exc:
            last_error, value = exc, None
        if value is not None:
            return value
        time.sleep(every)
    raise NetworkError(
        f"timed out after {timeout:.0f} s waiting for {what}"
        + (f" (last error: {last_error})" if last_error else "")
    )


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class LocalNetwork:
    state_dir: Path
    agents: int = 3
    hour_seconds: float = 3600.0
    heartbeat_seconds: float = 10.0
    cpu_group_size: int = 1
    epoch_seconds: float = 10.0
    sample_interval: float = 1.0
    challenge_size: int = 512
    ray: bool = True  # agents start Ray for every lease (docs/ray.md)
    db_url: str | None = None
    python: str = sys.executable
    admin_key: str = field(default_factory=lambda: new_api_key("admin"), repr=False)
    port: int = 0
    supplier_keys: list[str] = field(default_factory=list, repr=False)
    # Join each lease's WireGuard mesh. Off by default: agents sharing one namespace would
    # route each other's overlay addresses through several interfaces of that namespace.
    mesh: bool = False
    # Agents offer Internet egress to leases that book it (`agent run --offer-egress`).
    egress: bool = False
    # Which container runs each agent's leases (`agent run --container-engine`; None: the
    # agent's default, auto), per agent index where `agent_engines` names one, and the
    # Docker engine's socket they use (`--docker-host`; None: Docker's default).
    container_engine: str | None = None
    agent_engines: dict[int, str] = field(default_factory=dict)
    docker_host: str | None = None
    # Network namespaces (mesh tests): argv prefixes that run the coordinator and each agent
    # inside one, where the coordinator listens, and the URL agents use to reach it. `port`
    # is then where the test process reaches the coordinator (a forwarder's port).
    coordinator_prefix: list[str] = field(default_factory=list)
    coordinator_listen: str | None = None
    agent_url: str | None = None
    agent_prefixes: dict[int, list[str]] = field(default_factory=dict)
    _coordinator: Proc | None = None
    _agents: dict[int, Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def admin(self) -> Client:
        return Client(self.url, self.admin_key)

    def _spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        popen = subprocess.Popen(
            [*(prefix or []), self.python, "-m", "gpupool", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        return Proc(name, popen, log)

    # start ------------------------------------------------------------------------------

    def start(self, on_step: Callable[[str], None] = lambda _: None) -> LocalNetwork:
        try:
            self._start(on_step)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, on_step: Callable[[str], None]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        key_file = self.state_dir / "admin.key"
        write_secret(key_file, self.admin_key.encode())
        db_url = self.db_url or f"sqlite:///{self.state_dir / 'coordinator.db'}"
        options = {
            "--db": db_url,
            "--listen": self.coordinator_listen or f"127.0.0.1:{self.port}",
            "--admin-key-file": str(key_file),
            "--hour-seconds": str(self.hour_seconds),
            "--heartbeat-seconds": str(self.heartbeat_seconds),
            "--state-dir": str(self.state_dir / "coordinator"),
            "--epoch-seconds": str(self.epoch_seconds),
            "--sample-interval": str(self.sample_interval),
            "--challenge-size": str(self.challenge_size),
        }
        self._coordinator = self._spawn(
            "coordinator",
            ["coordinator", "serve", *_flat(options)],
            prefix=self.coordinator_prefix,
        )
        on_step(f"coordinator starting on {self.url} (SQLite in {self.state_dir})")
        with self.admin() as admin:
            wait_for("the coordinator to answer", lambda: self._alive_check(admin), 60)
            for i in range(self.agents):
                created = admin.create_account("supplier", f"supplier-{i + 1}")
                self.supplier_keys.append(created.api_key)
        for i in range(self.agents):
            self.start_agent(i)
        on_step(f"{self.agents} agents starting (CPU devices: this machine has no GPU)")
        # devices are challenged only once staked (docs/challenge.md): up, stake, then settle
        self.wait_workers_up(self.agents, settled=False)
        staked = sum(self.stake_devices(key) for key in self.supplier_keys)
        if staked:
            on_step(f"suppliers staked {staked} devices (docs/ledger.md)")
        self.wait_workers_up(self.agents)

    def stake_devices(self, supplier_key: str, funds: str = "1000") -> int:
        """Fund a supplier through the faucet and stake each of its devices that is not
        staked yet, so they enter the pool; returns how many were staked."""
        with Client(self.url, supplier_key) as gp, self.admin() as admin:
            me = gp.me()
            admin.fund(me.id, funds, key=f"localnet-stake-{me.id}-{len(gp.stakes())}")
            todo = [s for s in gp.stakes() if s.held_micros < s.required_micros]
            for s in todo:
                gp.stake(s.device_id)
        return len(todo)

    def create_renter(self, name: str, funds: str = "100") -> str:
        """A renter account funded through the faucet; returns its API key."""
        with self.admin() as admin:
            created = admin.create_account("renter", name)
            admin.fund(created.id, funds, key=f"localnet-{created.id}")
        return created.api_key

    def _alive_check(self, admin: Client) -> bool | None:
        assert self._coordinator is not None
        if self._coordinator.popen.poll() is not None:
            raise NetworkError(f"the coordinator exited; see {self.log_dir / 'coordinator.log'}")
        return True if admin.health() else None

    def agent_dir(self, index: int) -> Path:
        return self.state_dir / f"agent-{index + 1}"

    def agent_leases(self, worker_id: str) -> list[dict[str, Any]]:
        """`gpupool agent leases --json` of the local agent running `worker_id`: what its
        supplier sees on the host (each lease's sandbox, cpuset and disk paths)."""
        for index in range(self.agents):
            folder = self.agent_dir(index)
            if load(folder / "identity.key").worker_id != worker_id:
                continue
            argv = [sys.executable, "-m", "gpupool", "agent", "leases", "--state-dir"]
            done = subprocess.run(
                [*argv, str(folder), "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"gpupool agent leases: {done.stderr.strip()[-300:]}")
            leases: list[dict[str, Any]] = json.loads(done.stdout)
            return leases
        raise LookupError(f"no local agent runs worker {worker_id}")

    def start_agent(self, index: int, teardown_on_exit: bool = True) -> None:
        """Start agent `index` (again); a restarted agent keeps its state folder."""
        region, lat, lon = SITES[index % len(SITES)]
        options = {
            "--coordinator": self.agent_url or self.url,
            "--state-dir": str(self.agent_dir(index)),
            "--region": region,
            "--latitude": str(lat),
            "--longitude": str(lon),
            "--cpu-group-size": str(self.cpu_group_size),
        }
        args = ["agent", "run", *_flat(options)]
        # These agents stand for separate machines but share this machine's cores: each
        # must leave the others' lease processes alone.
        args += ["--guard-allow-cgroup", "/gpupool-"]
        if teardown_on_exit:
            args.append("--teardown-on-exit")
        if not self.ray:
            args.append("--no-ray")
        args.append("--mesh" if self.mesh else "--no-mesh")
        if self.egress:
            args.append("--offer-egress")
        engine = self.agent_engines.get(index, self.container_engine)
        if engine is not None:
            args += ["--container-engine", engine]
        if self.docker_host is not None:
            args += ["--docker-host", self.docker_host]
        self._agents[index] = self._spawn(
            f"agent-{index + 1}",
            args,
            env={"GPUPOOL_KEY": self.supplier_keys[index]},
            prefix=self.agent_prefixes.get(index),
        )

    def wait_workers_up(self, count: int, timeout: float = 60, settled: bool = True) -> None:
        """Wait for `count` workers up and, with `settled`, every device of theirs through its
        capability challenge (passed, or judged)."""

        def enough() -> bool | None:
            for proc in self._agents.values():
                if proc.popen.poll() is not None:
                    raise NetworkError(f"{proc.name} exited; see {self.log_dir}/{proc.name}.log")
            with self.admin() as admin:
                up = [x for x in admin.workers() if x.status == "up"]
            judged = all(
                d.verified or d.status in ("unsupported", "blocked") for x in up for d in x.devices
            )
            return True if len(up) >= count and (judged or not settled) else None

        what = "with their devices verified" if settled else "(devices not yet staked)"
        wait_for(f"{count} workers to be up {what}", enough, timeout)

    # stop -------------------------------------------------------------------------------

    def agent_pid(self, index: int) -> int:
        return self._agents[index].popen.pid

    def stop_agent(self, index: int, sig: int = signal.SIGTERM) -> None:
        proc = self._agents.pop(index, None)
        if proc is not None:
            _stop_all([proc], sig)

    def stop(self) -> None:
        """Stop every process this network started: agents first, so they can end their
        leases, then the coordinator. Safe to call twice."""
        agents = list(self._agents.values())
        self._agents.clear()
        _stop_all(agents, signal.SIGTERM)  # in parallel: each ends its own leases
        if self._coordinator is not None:
            _stop_all([self._coordinator], signal.SIGTERM)
            self._coordinator = None

    def __enter__(self) -> LocalNetwork:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _flat(options: dict[str, str]) -> list[str]:
    return [x for pair in options.items() for x in pair]


def _stop_all(procs: list[Proc], sig: int, grace: float = 15.0) -> None:
    """Signal every process, then wait for each; kill what outlives the grace period."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(sig)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
        proc.log.close()
