"""The Docker Engine's HTTP API, spoken over its Unix socket: what the Docker lease sandbox
(docker.py) and the registration need from an engine, and nothing more.

The API, not a `docker` client on PATH: a machine may carry a client of another version, or
one with no engine behind it, and a secret (a lease's environment) must never sit on a
command line where every user's `ps` reads it. The socket is GPUPOOL_DOCKER_HOST (a path or
`unix://` URL), else Docker's default; API version 1.41 is Docker 20.10's, which every
later engine still serves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from gpupool.agent.sandbox.cgroup import SandboxError

DEFAULT_SOCKET = "/var/run/docker.sock"
API_VERSION = "v1.41"
PING_TIMEOUT = 5.0
PULL_TIMEOUT = 300.0


class DockerError(SandboxError):
    """The engine refused or could not be reached; the message says which and why."""


def socket_path(host: str | None) -> Path:
    """The engine's socket from a GPUPOOL_DOCKER_HOST value (None: Docker's default)."""
    value = host or DEFAULT_SOCKET
    if value.startswith("unix://"):
        value = value.removeprefix("unix://")
    elif "://" in value:
        raise ValueError(f"GPUPOOL_DOCKER_HOST {host!r}: only a unix:// socket is supported")
    return Path(value)


class DockerEngine:
    """One engine, by its socket. Every call raises DockerError on failure."""

    def __init__(self, socket: Path, timeout: float = 30.0) -> None:
        self.socket = socket
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)),
            base_url=f"http://docker/{API_VERSION}",
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        timeout: float | None = None,
        ok: Iterable[int] = (200, 201, 204),
    ) -> httpx.Response:
        try:
            answer = self._client.request(
                method,
                path,
                json=body,
                params=params,
                content=content,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise DockerError(f"the Docker engine at {self.socket} is unreachable: {exc}") from exc
        if answer.status_code not in tuple(ok):
            try:
                message = answer.json().get("message", answer.text)
            except ValueError:
                message = answer.text
            raise DockerError(f"docker {method} {path}: {answer.status_code} {message}".strip())
        return answer

    def answers(self) -> bool:
        """Whether an engine answers on the socket (the registration's `+docker`)."""
        if not self.socket.exists():
            return False
        try:
            return self._call("GET", "/_ping", timeout=PING_TIMEOUT).text.strip() == "OK"
        except DockerError:
            return False

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._call("GET", "/info").json()
        return info

    # images ------------------------------------------------------------------------------

    def has_image(self, name: str) -> bool:
        return self._call("GET", f"/images/{name}/json", ok=(200, 404)).status_code == 200

    def import_image(self, tar: bytes, repo: str, tag: str) -> None:
        """`docker import`: an image of one layer, this tar, with no registry involved."""
        params = {"fromSrc": "-", "repo": repo, "tag": tag}
        self._stream_errors(self._call("POST", "/images/create", params=params, content=tar))

    def pull(self, name: str, timeout: float = PULL_TIMEOUT) -> None:
        """Pull an image, giving up after `timeout` seconds (a registry may be unreachable)."""
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        params = {"fromImage": repo, "tag": tag or "latest"}
        self._stream_errors(self._call("POST", "/images/create", params=params, timeout=timeout))

    @staticmethod
    def _stream_errors(answer: httpx.Response) -> None:
        # The engine answers 200 and then reports a failure inside the progress stream.
        for line in answer.text.splitlines():
            with_error = json.loads(line) if line.strip().startswith("{") else {}
            if with_error.get("error"):
                raise DockerError(str(with_error["error"]))

    # containers --------------------------------------------------------------------------

    def create(self, name: str, body: Mapping[str, Any]) -> str:
        answer = self._call("POST", "/containers/create", body, params={"name": name})
        return str(answer.json()["Id"])

    def start(self, container: str) -> None:
        self._call("POST", f"/containers/{container}/start", ok=(204, 304))

    def inspect(self, container: str) -> dict[str, Any] | None:
        answer = self._call("GET", f"/containers/{container}/json", ok=(200, 404))
        return answer.json() if answer.status_code == 200 else None

    def remove(self, container: str) -> None:
        """Kill and remove the container (and its anonymous volumes); absent is fine."""
        params = {"force": "true", "v": "true"}
        self._call("DELETE", f"/containers/{container}", params=params, ok=(204, 404))

    def list_labelled(self, label: str) -> list[dict[str, Any]]:
        filters = json.dumps({"label": [label]})
        answer = self._call("GET", "/containers/json", params={"all": "true", "filters": filters})
        found: list[dict[str, Any]] = answer.json()
        return found

    def exec(
        self, container: str, argv: list[str], env: Mapping[str, str], user: str, workdir: str
    ) -> int:
        """Start `argv` detached inside the running container; its pid on the host."""
        body = {
            "Cmd": argv,
            "Env": [f"{k}={v}" for k, v in sorted(env.items())],
            "User": user,
            "WorkingDir": workdir,
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
        }
        exec_id = self._call("POST", f"/containers/{container}/exec", body).json()["Id"]
        self._call("POST", f"/exec/{exec_id}/start", {"Detach": True, "Tty": False})
        deadline = time.monotonic() + 10.0
        while True:  # the engine knows the pid a moment after it answered the start
            state = self._call("GET", f"/exec/{exec_id}/json").json()
            if state.get("Pid"):
                return int(state["Pid"])
            if not state.get("Running") and state.get("ExitCode") is not None:
                raise DockerError(f"{argv[0]} exited {state['ExitCode']} at once in {container}")
            if time.monotonic() > deadline:
                raise DockerError(f"{argv[0]} did not start in {container}")
            time.sleep(0.005)

    def run_to_end(
        self, container: str, argv: list[str], user: str, timeout: float = 60.0
    ) -> tuple[int, str]:
        """Run `argv` inside the container and wait: (exit code, its output)."""
        body = {"Cmd": argv, "User": user, "AttachStdout": True, "AttachStderr": True}
        exec_id = self._call("POST", f"/containers/{container}/exec", body).json()["Id"]
        answer = self._call(
            "POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": True}, timeout=timeout
        )
        state = self._call("GET", f"/exec/{exec_id}/json").json()
        return int(state.get("ExitCode") or 0), answer.text
