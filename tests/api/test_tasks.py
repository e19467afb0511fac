"""Protocol mode through the API with the agent's real task runner: a renter's job runs in a
sandbox on the assigned device and comes back with its sha256; images need a worker with
Docker; a validator's re-run on another supplier's device confirms an honest result."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from gpupool.agent.link import LinkError
from gpupool.agent.sandbox.cgroup import Sandboxes
from gpupool.agent.tasks import TaskRunner
from gpupool.domain.models import DeviceKind, DeviceSpec
from tests.api.conftest import AgentSim, Api


def _runner(sim: AgentSim, devices: int = 1) -> TaskRunner:
    specs = [
        DeviceSpec(f"cpu{i}", DeviceKind.CPU, "Test CPU", 1024, 100_000, cores=(0,))
        for i in range(devices)
    ]
    # process-group sandboxes: no cgroups created by this test
    return TaskRunner(sim.link, Sandboxes(sim.worker_id, None), specs, sim.worker_id, docker=False)


def _drain(*runners: TaskRunner) -> int:
    ran = 0
    for _ in range(5):
        work = [(r, run) for r in runners for run in r.link.tasks()]
        if not work:
            break
        for runner, run in work:
            runner.execute(run)
            ran += 1
    return ran


def _submit(api: Api, renter: str, command: str, data: bytes, **extra: Any) -> Any:
    body = {"command": command, "input_b64": base64.b64encode(data).decode(), **extra}
    return api.http.post("/v1/tasks", json=body, headers=api.as_key(renter))


def test_a_job_runs_on_its_device_and_returns_the_output_and_its_hash(api: Api) -> None:
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    renter = api.account("renter", "r")
    r = _submit(api, renter, "tr a-z A-Z", b"hello protocol mode\n")
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["runs"][0]["state"] == "assigned"
    assert task["runs"][0]["device_id"] == sim.device(0)

    assert _drain(_runner(sim)) == 1
    done = api.http.get(f"/v1/tasks/{task['id']}", headers=api.as_key(renter)).json()
    assert done["state"] == "done"
    output = base64.b64decode(done["output_b64"])
    assert output == b"HELLO PROTOCOL MODE\n"
    assert done["output_hash"] == hashlib.sha256(output).hexdigest()
    other = api.account("renter", "other")
    assert api.http.get(f"/v1/tasks/{task['id']}", headers=api.as_key(other)).status_code == 404


def test_a_failing_command_fails_the_job_with_its_reason(api: Api) -> None:
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    renter = api.account("renter", "r")
    task = _submit(api, renter, "echo broken >&2; exit 3", b"").json()
    _drain(_runner(sim))
    done = api.http.get(f"/v1/tasks/{task['id']}", headers=api.as_key(renter)).json()
    assert done["state"] == "failed"
    assert "exit status 3" in done["runs"][0]["error"] and "broken" in done["runs"][0]["error"]


def test_an_image_needs_a_worker_with_docker(api: Api) -> None:
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)  # registers with sandbox "cgroup2": no Docker
    renter = api.account("renter", "r")
    r = _submit(api, renter, "cat", b"x", image="alpine:3")
    assert r.status_code == 409 and "Docker" in r.json()["message"]


def test_a_result_must_match_its_hash_and_come_from_the_assigned_worker(api: Api) -> None:
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    renter = api.account("renter", "r")
    _submit(api, renter, "cat", b"x")
    run = sim.link.tasks()[0]
    try:
        sim.link.task_result(run.run_id, b"x", "0" * 64)
        raise AssertionError("a wrong hash was accepted")
    except LinkError as exc:
        assert exc.status == 422
    thief = api.agent(api.account("supplier", "t"))
    thief.register(devices=1)
    try:
        thief.link.task_result(run.run_id, b"x", hashlib.sha256(b"x").hexdigest())
        raise AssertionError("another worker's result was accepted")
    except LinkError as exc:
        assert exc.status == 404


def test_a_validator_rerun_on_another_supplier_confirms_an_honest_job(api: Api) -> None:
    first = api.agent(api.account("supplier", "a"))
    first.register(devices=1)
    renter = api.account("renter", "r")
    task = _submit(api, renter, "wc -c", b"twelve bytes").json()
    second = api.agent(api.account("supplier", "b"))
    second.register(devices=1)
    _drain(_runner(first), _runner(second))

    validator = api.account("validator", "v")
    r = api.http.post("/v1/validations", json={"p": 1.0}, headers=api.as_key(validator))
    assert r.status_code == 200 and r.json()["sampled"] == [task["id"]]
    assert (
        api.http.post("/v1/validations", json={"p": 1.0}, headers=api.as_key(renter)).status_code
        == 403
    )
    _drain(_runner(first), _runner(second))
    views = api.http.get(f"/v1/validations?ids={task['id']}", headers=api.as_key(validator)).json()
    assert views[0]["validation"] == "confirmed"
    check = next(run for run in views[0]["runs"] if run["purpose"] == "check")
    assert check["worker_id"] == second.worker_id  # not the supplier that ran the job


def test_a_run_without_an_answer_goes_to_another_device_after_the_deadline(api: Api) -> None:
    silent = api.agent(api.account("supplier", "silent"))
    silent.register(devices=1)
    renter = api.account("renter", "r")
    task = _submit(api, renter, "cat", b"x").json()
    busy = api.agent(api.account("supplier", "busy"))
    busy.register(devices=1)
    api.clock.advance(901)
    busy.link.heartbeat()  # the silent worker is down by now, the busy one is up
    api.tick()
    shown = api.http.get(f"/v1/tasks/{task['id']}", headers=api.as_key(renter)).json()
    first, second = shown["runs"]
    assert first["state"] == "failed" and "no answer" in first["error"]
    assert second["state"] == "assigned" and second["worker_id"] == busy.worker_id
    assert _drain(_runner(busy)) == 1
    shown = api.http.get(f"/v1/tasks/{task['id']}", headers=api.as_key(renter)).json()
    assert shown["state"] == "done"
