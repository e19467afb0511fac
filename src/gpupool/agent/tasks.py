"""Protocol-mode runs on the agent: fetch the runs the coordinator assigned to this worker,
run each in its own sandbox held to its device's cores (the lease sandbox machinery:
a cgroup, or a process group where there is none), and send back the output with its
sha256.

A job's command is run by /bin/sh with the input on stdin; its stdout is the output. A job
with an image runs `docker run --rm -i --network none IMAGE sh -c COMMAND` inside the
sandbox, where Docker is installed; elsewhere it is answered with an error.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shlex
import shutil
import tempfile
import threading
import time
from pathlib import Path

from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.agent.sandbox.cgroup import SandboxError, Sandboxes
from gpupool.agent.sandbox.dockerapi import DockerEngine, socket_path
from gpupool.domain.models import DeviceSpec
from gpupool.wire.tasks import AgentRunOut

log = logging.getLogger("gpupool.agent.tasks")

POLL_SECONDS = 2.0
RUN_TIMEOUT_SECONDS = 600.0
MAX_OUTPUT_BYTES = 512 << 10

# $0 is the run's folder; the exit status is written last, so its presence means done.
SCRIPT = 'cd "$0" && { /bin/sh -c "$1" < input > output 2> stderr; echo $? > status; }'


def docker_available(host: str | None = None) -> bool:
    """Whether a Docker engine answers on its socket (GPUPOOL_DOCKER_HOST, else the
    default): the registration's `+docker` and protocol-mode image runs ask the same."""
    if shutil.which("docker") is None:
        return False
    engine = DockerEngine(socket_path(host))
    try:
        return engine.answers()
    finally:
        engine.close()


class TaskRunner:
    def __init__(
        self,
        link: CoordinatorLink,
        sandboxes: Sandboxes,
        devices: list[DeviceSpec],
        worker_id: str,
        *,
        docker: bool | None = None,
        timeout_seconds: float = RUN_TIMEOUT_SECONDS,
    ) -> None:
        self.link = link
        self.sandboxes = sandboxes
        self.devices = {f"{worker_id}:{d.local_name}": d for d in devices}
        self.docker = docker_available() if docker is None else docker
        self.timeout_seconds = timeout_seconds

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                for run in self.link.tasks():
                    self.execute(run)
            except LinkError as exc:
                if exc.status not in (0, 401):  # not registered yet, or the coordinator away
                    log.warning("event=tasks_error status=%d reason=%s", exc.status, exc.message)
            stop.wait(POLL_SECONDS)

    def command_line(self, run: AgentRunOut) -> str | None:
        if run.image is None:
            return run.command
        if not self.docker:
            return None
        return (
            f"docker run --rm -i --network none {shlex.quote(run.image)} "
            f"sh -c {shlex.quote(run.command)}"
        )

    def execute(self, run: AgentRunOut) -> None:
        command = self.command_line(run)
        if command is None:
            self.link.task_result(run.run_id, None, None, "this worker has no Docker")
            return
        device = self.devices.get(run.device_id)
        cores = device.cores if device is not None else ()
        with tempfile.TemporaryDirectory(prefix="gpupool-task-") as tmp:
            folder = Path(tmp)
            (folder / "input").write_bytes(base64.b64decode(run.input_b64))
            try:
                sandbox = self.sandboxes.create(f"task-{run.run_id}", cores)
            except (SandboxError, OSError) as exc:
                self.link.task_result(run.run_id, None, None, f"no sandbox: {exc}")
                return
            try:
                sandbox.spawn(["/bin/sh", "-c", SCRIPT, str(folder), command])
                error = self._wait(folder)
            finally:
                sandbox.destroy()
                self.sandboxes.repartition()
            output = (folder / "output").read_bytes() if (folder / "output").exists() else b""
        if error is None and len(output) > MAX_OUTPUT_BYTES:
            error = f"the output is over {MAX_OUTPUT_BYTES} bytes"
        if error is not None:
            log.warning("event=task_failed run=%s reason=%s", run.run_id, error)
            self.link.task_result(run.run_id, None, None, error)
            return
        digest = hashlib.sha256(output).hexdigest()
        self.link.task_result(run.run_id, output, digest)
        log.info("event=task_done run=%s bytes=%d sha256=%s", run.run_id, len(output), digest)

    def _wait(self, folder: Path) -> str | None:
        deadline = time.monotonic() + self.timeout_seconds
        status = folder / "status"
        while not status.exists() or not status.read_text().strip():
            if time.monotonic() > deadline:
                return f"timed out after {self.timeout_seconds:.0f} s"
            time.sleep(0.05)
        code = status.read_text().strip()
        if code != "0":
            stderr = (folder / "stderr").read_bytes()[-500:].decode(errors="replace")
            return f"exit status {code}: {stderr.strip()}"
        return None
