"""The agent's side of the API: every request signed with the worker's Ed25519 key.

The body is serialized once, signed, and sent as exactly those bytes; the path that is signed
includes the query string, so neither can be changed in flight.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from gpupool.crypto.identity import Identity
from gpupool.crypto.requests import sign_request
from gpupool.wire import models as w
from gpupool.wire import ray as wr
from gpupool.wire import tasks as wt

CHECK_TIMEOUT_SECONDS = 120.0  # the coordinator's check of a long chain (docs/challenge.md)


class LinkError(Exception):
    """The coordinator answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class CoordinatorLink:
    def __init__(
        self,
        base_url: str,
        identity: Identity,
        supplier_key: str,
        clock: Callable[[], float] = time.time,
        timeout: float = 15.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`http` replaces the HTTP client (tests pass an in-process app's client)."""
        self._http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self._identity = identity
        self._supplier_key = supplier_key
        self._clock = clock

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        payload: Any = None,
        timeout: float | None = None,
        with_key: bool = False,
    ) -> Any:
        body = b"" if payload is None else json.dumps(payload).encode()
        return json.loads(self._send(method, path, body, timeout, with_key))

    def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        timeout: float | None = None,
        with_key: bool = False,
        content_type: str = "application/json",
    ) -> bytes:
        """Sign and send `body` exactly; the answer's bytes, or LinkError."""
        headers = sign_request(self._identity, method, path, body, self._clock()).as_dict()
        if body:
            headers["Content-Type"] = content_type
        if with_key:
            headers["Authorization"] = f"Bearer {self._supplier_key}"
        try:
            response = self._http.request(
                method,
                path,
                content=body,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise LinkError(0, "unreachable", f"coordinator unreachable: {exc}") from exc
        _raise_for_error(response)
        return response.content

    def bandwidth_download(self, nbytes: int) -> tuple[int, float]:
        """Fetch an `nbytes` payload; the bytes that came after the first chunk and the
        seconds they took (so connection set-up and latency are not counted)."""
        path = f"/v1/agent/bandwidth?bytes={nbytes}"
        headers = sign_request(self._identity, "GET", path, b"", self._clock()).as_dict()
        first_at = last_at = 0.0
        size = first = 0
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response)
                for chunk in response.iter_raw():
                    last_at = time.perf_counter()
                    if not first_at:
                        first_at, first = last_at, len(chunk)
                    size += len(chunk)
        except httpx.HTTPError as exc:
            raise LinkError(0, "unreachable", f"coordinator unreachable: {exc}") from exc
        if size != nbytes:
            raise LinkError(0, "short_read", f"asked for {nbytes} bytes, got {size}")
        return size - first, last_at - first_at

    def bandwidth_upload(self, payload: bytes, download_mbps: float) -> w.BandwidthOut:
        """Send `payload` for the coordinator to time."""
        answer = self._send(
            "POST",
            f"/v1/agent/bandwidth?download_mbps={download_mbps:.6g}",
            payload,
            content_type="application/octet-stream",
        )
        return w.BandwidthOut.model_validate_json(answer)

    def register(self, registration: w.WorkerRegister) -> w.WorkerOut:
        data = self.call(
            "POST", "/v1/agent/register", registration.model_dump(mode="json"), with_key=True
        )
        return w.WorkerOut.model_validate(data)

    def heartbeat(self, report: w.HeartbeatIn | None = None) -> w.AssignmentsOut:
        payload = report.model_dump(mode="json") if report is not None else None
        return w.AssignmentsOut.model_validate(self.call("POST", "/v1/agent/heartbeat", payload))

    def leases(self, version: int, wait: float) -> w.AssignmentsOut:
        data = self.call(
            "GET", f"/v1/agent/leases?version={version}&wait={wait:g}", timeout=wait + 15
        )
        return w.AssignmentsOut.model_validate(data)

    def report(self, lease_id: str, device_id: str, state: str, reason: str = "") -> str:
        data = self.call(
            "POST",
            f"/v1/agent/leases/{lease_id}/members",
            {"device_id": device_id, "state": state, "reason": reason},
        )
        return str(data["lease_state"])

    def ray_report(self, lease_id: str, report: wr.RayNodeReport) -> None:
        self._send("POST", f"/v1/agent/leases/{lease_id}/ray", report.model_dump_json().encode())

    def ray_head(self, lease_id: str) -> wr.RayHeadOut:
        return wr.RayHeadOut.model_validate(self.call("GET", f"/v1/agent/leases/{lease_id}/ray"))

    def beacon(self) -> w.BeaconOut:
        return w.BeaconOut.model_validate(self.call("GET", "/v1/agent/beacon"))

    def send_samples(self, batches: w.SamplesIn) -> w.SamplesOut:
        # The largest bodies an agent sends: serialized and parsed by pydantic directly.
        answer = self._send("POST", "/v1/agent/samples", batches.model_dump_json().encode())
        return w.SamplesOut.model_validate_json(answer)

    def challenge_answer(
        self, challenge_id: str, root: str, compute_seconds: float
    ) -> w.ChallengeRowsOut:
        body = {"root": root, "compute_seconds": compute_seconds}
        data = self.call("POST", f"/v1/agent/challenges/{challenge_id}/answer", body)
        return w.ChallengeRowsOut.model_validate(data)

    def challenge_sketch(self, challenge_id: str, values: list[int]) -> list[int]:
        """The memory sketch; the coordinator answers with the rows to open."""
        data = self.call("POST", f"/v1/agent/challenges/{challenge_id}/sketch", {"values": values})
        return w.ChallengeRowsOut.model_validate(data).rows

    def tasks(self) -> list[wt.AgentRunOut]:
        """Protocol-mode runs assigned to this worker."""
        return [wt.AgentRunOut.model_validate(x) for x in self.call("GET", "/v1/agent/tasks")]

    def task_result(
        self, run_id: str, output: bytes | None, output_hash: str | None, error: str = ""
    ) -> wt.AgentResultOut:
        body = {
            "output_b64": base64.b64encode(output).decode() if output is not None else None,
            "output_hash": output_hash,
            "error": error[-2000:],
        }
        data = self.call("POST", f"/v1/agent/tasks/{run_id}/result", body)
        return wt.AgentResultOut.model_validate(data)

    def challenge_open(
        self, challenge_id: str, openings: list[dict[str, Any]]
    ) -> w.ChallengeResultOut:
        # A long chain takes the coordinator seconds to follow (docs/challenge.md): wait for it.
        data = self.call(
            "POST",
            f"/v1/agent/challenges/{challenge_id}/open",
            {"openings": openings},
            timeout=CHECK_TIMEOUT_SECONDS,
        )
        return w.ChallengeResultOut.model_validate(data)

    def challenge_fail(self, challenge_id: str, reason: str) -> w.ChallengeResultOut:
        data = self.call(
            "POST", f"/v1/agent/challenges/{challenge_id}/fail", {"reason": reason[:2000]}
        )
        return w.ChallengeResultOut.model_validate(data)


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        data = response.json()
        code, message = data.get("error", "error"), data.get("message", response.text)
    except ValueError:
        code, message = "error", response.text[:200]
    raise LinkError(response.status_code, code, message)
