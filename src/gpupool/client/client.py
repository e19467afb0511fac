"""`Client`: one method per API call, returning the wire models; errors raise `ApiError`.

Given `pins`, the client checks the key the coordinator names on every answer against the
pinned one (pinning it if there is none; see `client/pins.py`) before it reads the answer,
and raises `CoordinatorKeyChanged` on a mismatch. That costs no request, and the pin file
is read once per client unless the key changes.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from gpupool.client.pins import KnownCoordinators
from gpupool.wire import ledger as wl
from gpupool.wire import models as w
from gpupool.wire import ray as r
from gpupool.wire import tasks as wt
from gpupool.wire.mesh import MeshMapOut


class ApiError(Exception):
    """The coordinator refused a request (`status` >= 400) or could not be reached (0)."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


def _idempotency(key: str | None) -> dict[str, str] | None:
    return {"Idempotency-Key": key} if key else None


def _booking(fields: dict[str, Any]) -> dict[str, Any]:
    """A booking's (or an offers query's) fields as sent: unset ones left out, the price
    as a decimal string."""
    return {
        k: (str(v) if k == "max_price_per_hour" else v) for k, v in fields.items() if v is not None
    }


class Client:
    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        timeout: float = 30.0,
        pins: KnownCoordinators | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._pins = pins
        self._checked_key: str | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method, path, json=json, headers=headers, content=content, params=params
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                0, "unreachable", f"cannot reach the coordinator at {self.base_url}: {exc}"
            ) from exc
        if self._pins is not None:
            self._check_key(response)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": "http_error", "message": response.text[:300]}
            if not isinstance(body, dict):
                body = {"error": "http_error", "message": str(body)[:300]}
            raise ApiError(
                response.status_code,
                str(body.get("error", "http_error")),
                str(body.get("message", response.reason_phrase)),
                body,
            )
        return response.json() if response.content else None

    def _check_key(self, response: httpx.Response) -> None:
        assert self._pins is not None
        presented = response.headers.get(w.COORDINATOR_KEY_HEADER)
        if presented is None and not response.is_success:
            return  # a proxy's error page, say: nothing to check, and it carries no data
        if presented is None or presented != self._checked_key:
            # the first answer, or one naming another key: the pin file decides
            self._pins.check(self.base_url, presented)
            self._checked_key = presented

    # meta and accounts -------------------------------------------------------------------

    def coordinator_key(self) -> str:
        data = self._call("GET", "/v1/coordinator/key")
        return w.CoordinatorKeyOut.model_validate(data).public_key

    def health(self) -> dict[str, str]:
        data: dict[str, str] = self._call("GET", "/v1/health")
        return data

    def create_account(self, role: str, name: str) -> w.AccountCreated:
        data = self._call("POST", "/v1/accounts", {"role": role, "name": name})
        return w.AccountCreated.model_validate(data)

    def me(self) -> w.AccountOut:
        return w.AccountOut.model_validate(self._call("GET", "/v1/accounts/me"))

    def set_soc2_verified(self, account_id: str, verified: bool) -> w.AccountOut:
        data = self._call("PUT", f"/v1/accounts/{account_id}/soc2", {"verified": verified})
        return w.AccountOut.model_validate(data)

    # workers and clusters ---------------------------------------------------------------

    def workers(self) -> list[w.WorkerOut]:
        return [w.WorkerOut.model_validate(x) for x in self._call("GET", "/v1/workers")]

    def create_cluster(self, idempotency_key: str | None = None, **booking: Any) -> w.ClusterOut:
        """Book a cluster; `booking` holds the fields of `wire.models.BookingIn` (None: unset).
        A retry with the same `idempotency_key` returns the first booking and pays once."""
        data = self._call("POST", "/v1/clusters", _booking(booking), _idempotency(idempotency_key))
        return w.ClusterOut.model_validate(data)

    def quote(self, **booking: Any) -> w.QuoteOut:
        """A dry run of `create_cluster(**booking)`: the devices it would get now and the
        price. Nothing is booked."""
        return w.QuoteOut.model_validate(
            self._call("POST", "/v1/clusters/quote", _booking(booking))
        )

    def offers(self, **filters: Any) -> list[w.OfferOut]:
        """What can be booked now; `filters` holds the fields of `wire.models.OffersQuery`
        (None: unset)."""
        data = self._call("GET", "/v1/offers", params=_booking(filters))
        return [w.OfferOut.model_validate(x) for x in data]

    def clusters(self) -> list[w.ClusterOut]:
        return [w.ClusterOut.model_validate(x) for x in self._call("GET", "/v1/clusters")]

    def cluster(self, cluster_id: str) -> w.ClusterOut:
        return w.ClusterOut.model_validate(self._call("GET", f"/v1/clusters/{cluster_id}"))

    def extend(
        self, cluster_id: str, hours: int, idempotency_key: str | None = None
    ) -> w.ClusterOut:
        data = self._call(
            "POST",
            f"/v1/clusters/{cluster_id}/extend",
            {"hours": hours},
            _idempotency(idempotency_key),
        )
        return w.ClusterOut.model_validate(data)

    def terminate(self, cluster_id: str) -> w.ClusterOut:
        data = self._call("POST", f"/v1/clusters/{cluster_id}/terminate")
        return w.ClusterOut.model_validate(data)

    # Proof of Time-Lock -------------------------------------------------------------------

    def proof(self, cluster_id: str) -> w.CertificateOut:
        data = self._call("GET", f"/v1/clusters/{cluster_id}/proof")
        return w.CertificateOut.model_validate(data)

    def proof_export(self, cluster_id: str) -> w.ProofExportOut:
        data = self._call("GET", f"/v1/clusters/{cluster_id}/proof/export")
        return w.ProofExportOut.model_validate(data)

    # Ray on the cluster, and its jobs (through the coordinator's proxy) ------------------------

    def cluster_ray(self, cluster_id: str) -> r.ClusterRayOut:
        return r.ClusterRayOut.model_validate(self._call("GET", f"/v1/clusters/{cluster_id}/ray"))

    def upload_package(self, cluster_id: str, name: str, data: bytes) -> None:
        """Store a zipped working directory in the cluster's Ray, for `submit_job`."""
        self._call("PUT", f"/v1/clusters/{cluster_id}/jobs/packages/{name}", content=data)

    def submit_job(
        self,
        cluster_id: str,
        entrypoint: str,
        working_dir_package: str | None = None,
        env_vars: dict[str, str] | None = None,
    ) -> r.JobOut:
        body: dict[str, Any] = {"entrypoint": entrypoint, "env_vars": env_vars or {}}
        if working_dir_package:
            body["working_dir_package"] = working_dir_package
        return r.JobOut.model_validate(self._call("POST", f"/v1/clusters/{cluster_id}/jobs", body))

    def jobs(self, cluster_id: str) -> list[r.JobOut]:
        return [
            r.JobOut.model_validate(x) for x in self._call("GET", f"/v1/clusters/{cluster_id}/jobs")
        ]

    def job(self, cluster_id: str, job_id: str) -> r.JobOut:
        return r.JobOut.model_validate(
            self._call("GET", f"/v1/clusters/{cluster_id}/jobs/{job_id}")
        )

    def job_logs(self, cluster_id: str, job_id: str) -> str:
        data = self._call("GET", f"/v1/clusters/{cluster_id}/jobs/{job_id}/logs")
        return r.JobLogsOut.model_validate(data).logs

    def stop_job(self, cluster_id: str, job_id: str) -> r.JobOut:
        data = self._call("POST", f"/v1/clusters/{cluster_id}/jobs/{job_id}/stop")
        return r.JobOut.model_validate(data)

    # the mesh -----------------------------------------------------------------------------

    def mesh_connect(self, cluster_id: str, public_key: str) -> MeshMapOut:
        """Add this machine (its WireGuard public key) to the cluster's mesh."""
        data = self._call(
            "POST", f"/v1/clusters/{cluster_id}/mesh/connect", {"public_key": public_key}
        )
        return MeshMapOut.model_validate(data)

    # the ledger ----------------------------------------------------------------------------

    def fund(self, account_id: str, amount: str, key: str | None = None) -> wl.EntryOut:
        """Mint `amount` into an account (admin key). A retry with the same `key` funds once."""
        body: dict[str, Any] = {"account_id": account_id, "amount": str(amount)}
        if key is not None:
            body["key"] = key
        return wl.EntryOut.model_validate(self._call("POST", "/v1/ledger/fund", body))

    def balance(self) -> wl.BalanceOut:
        return wl.BalanceOut.model_validate(self._call("GET", "/v1/ledger/balance"))

    def ledger_entries(self, after: int = 0, limit: int = 100) -> list[wl.EntryOut]:
        data = self._call("GET", f"/v1/ledger/entries?after={after}&limit={limit}")
        return [wl.EntryOut.model_validate(x) for x in data]

    def ledger_audit(self) -> wl.AuditOut:
        return wl.AuditOut.model_validate(self._call("GET", "/v1/ledger/audit"))

    def stakes(self) -> list[wl.StakeOut]:
        return [wl.StakeOut.model_validate(x) for x in self._call("GET", "/v1/stakes")]

    def stake(self, device_id: str, key: str | None = None) -> wl.EntryOut:
        body = {"key": key} if key else {}
        return wl.EntryOut.model_validate(self._call("POST", f"/v1/stakes/{device_id}", body))

    def unstake(self, device_id: str) -> wl.StakeOut:
        return wl.StakeOut.model_validate(self._call("DELETE", f"/v1/stakes/{device_id}"))

    # protocol mode --------------------------------------------------------------------------

    def submit_task(
        self,
        command: str,
        data: bytes,
        image: str | None = None,
        tolerance: float | None = None,
    ) -> wt.TaskOut:
        body: dict[str, Any] = {"command": command, "input_b64": base64.b64encode(data).decode()}
        if image is not None:
            body["image"] = image
        if tolerance is not None:
            body["tolerance"] = tolerance
        return wt.TaskOut.model_validate(self._call("POST", "/v1/tasks", body))

    def tasks(self) -> list[wt.TaskOut]:
        return [wt.TaskOut.model_validate(x) for x in self._call("GET", "/v1/tasks")]

    def task(self, task_id: str) -> wt.TaskOut:
        return wt.TaskOut.model_validate(self._call("GET", f"/v1/tasks/{task_id}"))

    def validate(self, p: float) -> list[str]:
        data = self._call("POST", "/v1/validations", {"p": p})
        return wt.ValidateOut.model_validate(data).sampled

    def validations(self, task_ids: list[str]) -> list[wt.TaskOut]:
        data = self._call("GET", f"/v1/validations?ids={','.join(task_ids)}")
        return [wt.TaskOut.model_validate(x) for x in data]

    def settle(self, lease_id: str) -> wl.EntryOut:
        return wl.EntryOut.model_validate(self._call("POST", f"/v1/ledger/settle/{lease_id}"))
