"""Reading the process table from /proc: who runs, where it may run, whose cgroup it is in.

Processes come and go while we read; one that vanishes mid-read is skipped, never an error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

PF_KTHREAD = 0x00200000
CMDLINE_LIMIT = 512


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    state: str
    exe: str  # "" when unreadable (kernel threads, other users' processes without root)
    cmdline: str
    cgroup2: str  # the unified-hierarchy path ("0::" line), "/" when none
    cpus_allowed: frozenset[int]
    last_cpu: int
    start_ticks: int
    kernel_thread: bool
    rss_kb: int = 0
    cpuset: str = ""  # the v1 cpuset path ("/gpupool-system"), "" where cpuset is not v1

    @property
    def identity(self) -> tuple[int, int]:
        """(pid, start time): tells a reused pid from the process that had it before."""
        return (self.pid, self.start_ticks)


def parse_cpu_list(text: str) -> list[int]:
    """`"0-3,6"` → `[0, 1, 2, 3, 6]` (the kernel's cpulist format); ValueError otherwise."""
    cores: set[int] = set()
    for part in text.replace(" ", "").strip().split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"not a CPU list: {text!r}")
        cores.update(range(int(low), int(high or low) + 1))
    return sorted(cores)


def parse_stat(text: str) -> tuple[str, str, int, int, int, int]:
    """(name, state, ppid, flags, start_ticks, last_cpu) from /proc/<pid>/stat.

    The name sits in parentheses and may itself hold spaces and parentheses, so the fields
    after it are split from the last ')'.
    """
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): field k is fields[k - 3]
    return name, fields[0], int(fields[1]), int(fields[6]), int(fields[19]), int(fields[36])


def read_process(entry: Path) -> ProcessInfo | None:
    try:
        pid = int(entry.name)
        name, state, ppid, flags, start, last_cpu = parse_stat((entry / "stat").read_text())
        status = (entry / "status").read_text()
        raw = (entry / "cmdline").read_bytes()
        cgroup_text = (entry / "cgroup").read_text()
    except (OSError, ValueError, IndexError):
        return None
    allowed: frozenset[int] = frozenset()
    rss_kb = 0
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            with contextlib.suppress(ValueError):
                allowed = frozenset(parse_cpu_list(line.split(":", 1)[1]))
        elif line.startswith("VmRSS:"):
            with contextlib.suppress(ValueError, IndexError):
                rss_kb = int(line.split()[1])
    cgroup2, cpuset = "/", ""
    for line in cgroup_text.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if line.startswith("0::"):
            cgroup2 = path.strip() or "/"
        elif "cpuset" in controllers.split(","):
            cpuset = path.strip()
    exe = ""
    with contextlib.suppress(OSError):
        exe = str((entry / "exe").readlink())
    kernel_thread = pid == 2 or ppid == 2 or bool(flags & PF_KTHREAD)
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        name=name,
        state=state,
        exe=exe,
        cmdline=raw.replace(b"\0", b" ").decode(errors="replace").strip()[:CMDLINE_LIMIT],
        cgroup2=cgroup2,
        cpus_allowed=allowed,
        last_cpu=last_cpu,
        start_ticks=start,
        kernel_thread=kernel_thread,
        rss_kb=rss_kb,
        cpuset=cpuset,
    )


def list_processes(proc_root: Path = Path("/proc")) -> list[ProcessInfo]:
    found = []
    for entry in proc_root.iterdir():
        if entry.name.isdigit():
            info = read_process(entry)
            if info is not None:
                found.append(info)
    return found
