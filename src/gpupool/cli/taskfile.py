"""The task file of `gpupool launch`: what to book, what to ship, what to set up and run.

In the spirit of SkyPilot's task YAML, smaller:

    name: train                 # optional; shown in messages
    resources:                  # the booking: `gpupool cluster create`'s options
      devices: 2
      kind: cpu                 # gpu (default) or cpu
      max_price: 0.10           # per device-hour
      hours: 1
      gpu_models: [A100-80GB]   # optional filters, as cluster create takes them
      regions: [eu-central]
    workdir: ./train            # shipped to every node; the commands run inside it
    file_mounts:                # more files into the working directory: DEST: LOCAL
      data/sites.csv: ../data/sites.csv
    envs:                       # environment of setup and run
      EPOCHS: "3"
    setup: pip list > setup.txt # on every node, before run (optional)
    run: python train.py        # on the head, as one Ray job (required)

Relative local paths are read from the task file's folder. A mount's destination is a path
inside the working directory: a sealed lease sees only its own folders, so an absolute or
escaping destination is refused. Unknown keys are refused too: a misspelt `setpu:` must not
silently book a cluster that skips its setup.
"""

from __future__ import annotations

import shutil
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpupool.cli.common import ENV_NAME, CliError
from gpupool.domain.models import DeviceKind, SecurityTier


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: int = Field(1, ge=1)
    kind: DeviceKind = DeviceKind.GPU
    max_price: str
    hours: int = Field(1, ge=1)
    gpu_models: list[str] | None = None
    min_memory_mb: int | None = Field(None, ge=0)
    regions: list[str] | None = None
    security_tier: SecurityTier = SecurityTier.ANY
    min_datacenter_tier: int | None = Field(None, ge=0, le=4)
    min_connectivity_tier: int | None = Field(None, ge=0, le=4)
    image: str | None = None
    egress: bool = False

    @field_validator("max_price", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> str:
        # YAML reads 0.10 as a float; the booking wants the decimal the user wrote
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be a decimal amount such as 0.10")
        try:
            price = Decimal(str(value))
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a decimal amount") from exc
        if not price.is_finite() or price <= 0:
            raise ValueError("must be a positive amount")
        return str(value)

    def booking(self) -> dict[str, Any]:
        """The fields of `Client.create_cluster` (None: unset)."""
        return {
            "devices": self.devices,
            "kind": self.kind.value,
            "hours": self.hours,
            "max_price_per_hour": self.max_price,
            "gpu_models": self.gpu_models or None,
            "min_memory_mb": self.min_memory_mb or None,
            "regions": self.regions or None,
            "security_tier": self.security_tier.value,
            "min_datacenter_tier": self.min_datacenter_tier or None,
            "min_connectivity_tier": self.min_connectivity_tier or None,
            "image": self.image,
            "egress": self.egress or None,
        }


class TaskFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    resources: Resources
    workdir: str | None = None
    file_mounts: dict[str, str] = Field(default_factory=dict)
    envs: dict[str, str] = Field(default_factory=dict)
    setup: str | None = None
    run: str = Field(min_length=1)

    @field_validator("envs", mode="before")
    @classmethod
    def _env_values(cls, value: Any) -> Any:
        # `EPOCHS: 3` is an int to YAML and a string to the job
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value

    @field_validator("envs")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("file_mounts")
    @classmethod
    def _destinations(cls, value: dict[str, str]) -> dict[str, str]:
        for dest in value:
            path = PurePosixPath(dest)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(
                    f"{dest!r}: a destination is a path inside the working directory (the "
                    "lease sees only its own folders), not absolute or with '..'"
                )
        return value


def load_task(path: Path) -> TaskFile:
    """Read and check a task file; every problem is one CliError naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", 2) from exc
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not YAML: {exc}", 2) from exc
    if not isinstance(data, dict):
        raise CliError(f"{path}: a task file is a mapping (resources:, run:, ...)", 2)
    try:
        return TaskFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"{path}: {problems}", 2) from exc


def stage(task: TaskFile, base: Path, into: Path) -> None:
    """Lay out the job's working directory in `into`: the workdir, then each mount."""
    if task.workdir is not None:
        source = (base / task.workdir).resolve()
        if not source.is_dir():
            raise CliError(f"workdir {task.workdir!r}: {source} is not a directory", 2)
        shutil.copytree(source, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    for dest, local in task.file_mounts.items():
        source = (base / local).resolve()
        target = into / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copyfile(source, target)
        else:
            raise CliError(f"file_mounts {dest!r}: {source} does not exist", 2)
