"""The README's "Using it" section, executed command for command on a world of network
namespaces: a coordinator host, two supplier machines and the renter's machine.

Every command of the section runs as written, in order, in one shell session per host
(`export`s carry over), and must exit 0. What the test changes, and only that:

- placeholders become the real value the session printed last: `a-...` the account id,
  `gps_...`/`gpr_...`/`gpv_...` the key, `w-...` the worker, `c-...` the cluster, `l-...`
  its lease, `raysubmit_...` the job, `<base64 key learned out of band>` what
  `gpupool coordinator key` printed; `coordinator` (the host name) the coordinator host's
  address; `/var/lib/gpupool` a state folder per supplier machine;
- where a command runs: `coordinator serve` on the coordinator host, each `agent run` on the
  next supplier machine (in the background, for the rest of the session, with
  `--guard-allow-cgroup /gpupool-` added: the two "machines" share this one's cores, and each
  must leave the other's leases alone), everything else on the renter's machine;
- the files the commands name (`./train`, `task.yaml`, `./data.bin`, `data/`) are made in
  the session's folder first, and the test waits where a person would (for the servers to
  answer, for staked devices to pass their challenge) before the next command.

A command the test cannot place fails it: a new line in the README needs its placeholder or
file here, which is the point.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from gpupool.testing.netns import Host, TestNetwork
from tests.processes import stop_group
from tests.readme_commands import README, using_it

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[3]
VENV_BIN = Path(sys.executable).parent

# placeholder -> the pattern of the value that stands for it (the last one printed)
PLACEHOLDERS = {
    "a-...": r"\ba-[0-9a-z]{8,}\b",
    "w-...": r"\bw-[0-9a-z]{8,}\b",
    "c-...": r"\bc-[0-9a-z]{8,}\b",
    "l-...": r"\bl-[0-9a-z]{8,}\b",
    "gps_...": r"\bgps_[A-Za-z0-9_-]{43}",
    "gpr_...": r"\bgpr_[A-Za-z0-9_-]{43}",
    "gpv_...": r"\bgpv_[A-Za-z0-9_-]{43}",
    "raysubmit_...": r"\braysubmit_[A-Za-z0-9]+\b",
}
SUPPLIERS = ("supplier1", "supplier2")

TRAIN = "import ray\nray.init()\nprint('TRAINED on', len(ray.nodes()), 'nodes')\n"
TASK = """\
name: readme
resources: {devices: 2, kind: cpu, max_price: 0.10}
workdir: ./train
envs: {EPOCHS: "1"}
setup: echo ready > setup.txt
run: cat setup.txt && echo "EPOCHS=$EPOCHS" && python train.py
"""


class Session:
    """One person's shell sessions on the hosts of a TestNetwork."""

    def __init__(self, net: TestNetwork, work: Path) -> None:
        self.net = net
        self.work = work
        self.exports: list[str] = []
        self.seen: dict[str, str] = {}
        self.coordinator_key = ""
        self.outputs: list[tuple[str, str]] = []  # (README command, what it printed)
        self.booked = False
        self.servers: list[subprocess.Popen[bytes]] = []
        self.started: list[str] = []  # the README's server commands, as started
        self.env = {
            "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(work / "home"),
            "COLUMNS": "200",
            "LANG": "C.UTF-8",
        }

    def argv(self, host: Host, command: str) -> list[str]:
        script = "\n".join(["set -eo pipefail", *self.exports, command])
        return ["nsenter", f"--net=/run/netns/{host.netns}", "bash", "-c", script]

    def expand(self, command: str) -> str:
        for placeholder, pattern in PLACEHOLDERS.items():
            if placeholder in command:
                if placeholder not in self.seen:
                    last = self.outputs[-1][1] if self.outputs else ""
                    raise AssertionError(f"{command!r}: nothing printed {pattern} yet:\n{last}")
                command = command.replace(placeholder, self.seen[placeholder])
        command = command.replace("<base64 key learned out of band>", self.coordinator_key)
        coord = self.net.host("coord").address
        return command.replace("http://coordinator:", f"http://{coord}:")

    def harvest(self, command: str, output: str) -> None:
        for placeholder, pattern in PLACEHOLDERS.items():
            found = re.findall(pattern, output)
            if found:
                self.seen[placeholder] = found[-1]
        if command.strip() == "gpupool coordinator key":
            self.coordinator_key = output.strip().splitlines()[0]

    def run(
        self, command: str, host: str = "renter", timeout: float = 300, record: bool = True
    ) -> str:
        line = self.expand(command)
        if line.startswith("export "):
            self.exports.append(line)
            line = "true"
        done = subprocess.run(
            self.argv(self.net.host(host), line),
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{output}"
        assert "Traceback" not in output, output
        if record:  # a README command, not one of the test's own waits
            self.harvest(command, output)
            self.outputs.append((command, output))
        return done.stdout

    def serve(self, command: str, host: str, state: Path | None = None) -> None:
        line = self.expand(command)
        if state is not None:
            line = line.replace("/var/lib/gpupool", str(state))
            line += " --guard-allow-cgroup /gpupool-"
        self.started.append(command)
        log = (self.work / f"{host}.log").open("wb")
        self.servers.append(
            subprocess.Popen(
                self.argv(self.net.host(host), line),
                cwd=self.work,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def json(self, command: str) -> object:
        return json.loads(self.run(command, record=False))

    def stop(self) -> None:
        for server in reversed(self.servers):  # agents first, then the coordinator
            if server.poll() is None:
                stop_group(server, timeout=60)


def _until(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s: {what}")


def _files(work: Path) -> None:
    (work / "home").mkdir()
    (work / "train").mkdir()
    (work / "train" / "train.py").write_text(TRAIN)
    (work / "task.yaml").write_text(TASK)
    (work / "data.bin").write_bytes(os.urandom(4096))
    (work / "data").symlink_to(REPO / "data")


@pytest.fixture
def session(
    test_network: Callable[[Sequence[str]], TestNetwork], tmp_path: Path
) -> Iterator[Session]:
    net = test_network(["coord", *SUPPLIERS, "renter"])
    _files(tmp_path)
    readme = Session(net, tmp_path)
    try:
        yield readme
    finally:
        # end what the README left running (a person would too) before the servers stop
        key = readme.seen.get("gpr_...")
        if key is not None and readme.exports:
            readme.exports.append(f"export GPUPOOL_KEY={key}")
            try:
                clusters = readme.json("gpupool cluster list --json")
                for c in clusters:  # type: ignore[attr-defined]
                    if c["state"] not in ("ended", "failed"):
                        readme.run(f"gpupool cluster terminate {c['id']}")
            except AssertionError:
                pass
        readme.stop()


def _settled(session: Session, command: str) -> None:
    """Wait where a person would before `command`."""
    if "gpupool account create" in command:
        _until(
            "the coordinator to answer",
            lambda: (
                subprocess.run(
                    session.argv(session.net.host("renter"), "gpupool coordinator key"),
                    env=session.env,
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            ),
        )
    if "stake list" in command or "stake add" in command:
        _until("the supplier's machine to register", lambda: _workers(session) >= 1)
    if ("cluster create" in command or "gpupool offers" in command) and not session.booked:
        _until("the staked devices to pass their challenge", lambda: _bookable(session) >= 4)
        session.booked = True


def _answers(session: Session) -> bool:
    coord = session.net.host("coord").address
    probe = f"import socket; socket.create_connection(({coord!r}, 8420), 1)"
    host = session.net.host("renter")
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{host.netns}", sys.executable, "-c", probe],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _workers(session: Session) -> int:
    key = session.seen["gps_..."]
    stakes = session.json(f"GPUPOOL_KEY={key} gpupool stake list --json")
    return len({s["device_id"].split(":")[0] for s in stakes})  # type: ignore[attr-defined]


def _bookable(session: Session) -> int:
    workers = session.json("gpupool workers list --json")
    return sum(
        d["verified"] and d["stake"] == "staked" and d["status"] == "idle"
        for w in workers  # type: ignore[attr-defined]
        if w["status"] == "up"
        for d in w["devices"]
    )


def test_the_readme_using_it_section_runs_command_for_command(session: Session) -> None:
    commands = using_it(README.read_text())
    assert len(commands) > 30  # the section was found and read whole
    for command in commands:
        if "gpupool coordinator serve" in command:
            session.serve(command, "coord")
            _until("the coordinator to answer", lambda: _answers(session))
        elif "gpupool agent run" in command:
            host = SUPPLIERS[sum("agent run" in c for c in session.started)]
            session.serve(command, host, state=session.work / host)
        else:
            _settled(session, command)
            session.run(command)
    printed = {command: output for command, output in session.outputs}

    def said(start: str) -> str:
        return next(o for c, o in printed.items() if c.startswith(start))

    assert "TRAINED on" in said("gpupool job submit")
    on_held = said("gpupool launch task.yaml --cluster")
    assert "EPOCHS=5" in on_held and "ready" in on_held
    assert "EPOCHS=1" in said("gpupool launch task.yaml --down")
    assert "terminated" in said("gpupool launch task.yaml --down")
