"""What the agent keeps on disk besides its identity: the leases it runs (with where their
sandboxes are) and device releases not yet reported, so that a restart picks up where the
agent stopped. Written atomically after every change."""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gpupool.agent.files import write_json


class StateDirBusy(Exception):
    pass


@dataclass
class LeaseRecord:
    sandbox: str
    devices: list[str]
    egress: bool = False  # the booking's Internet egress, given again after a restart


@dataclass
class AgentState:
    path: Path
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    unreported: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def load(cls, path: Path) -> AgentState:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(
            path,
            {
                k: LeaseRecord(v["sandbox"], list(v["devices"]), bool(v.get("egress")))
                for k, v in data["leases"].items()
            },
            {(lease, dev) for lease, dev in data.get("unreported", [])},
        )

    def save(self) -> None:
        data = {
            "leases": {
                k: {"sandbox": v.sandbox, "devices": v.devices, "egress": v.egress}
                for k, v in sorted(self.leases.items())
            },
            "unreported": sorted(self.unreported),
        }
        write_json(self.path, data, indent=1)


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the state folder for the life of the process, so two agents
    never share one identity."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = (state_dir / "agent.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise StateDirBusy(f"another agent is running with state folder {state_dir}") from exc
    return handle
