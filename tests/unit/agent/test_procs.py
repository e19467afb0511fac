"""Reading /proc: a fake tree for the awkward cases, the real one for our own process."""

from __future__ import annotations

import os
from pathlib import Path

from gpupool.agent.sandbox.procs import PF_KTHREAD, list_processes, parse_stat


def _stat(pid: int, comm: str, state: str, ppid: int, flags: int, start: int, cpu: int) -> str:
    # proc(5) fields from 3: state ppid pgrp session tty tpgid flags .. starttime(22) .. cpu(39)
    rest = [state, str(ppid), "0", "0", "0", "0", str(flags)] + ["0"] * 12 + [str(start)]
    rest += ["0"] * 16 + [str(cpu)] + ["0"] * 13
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


def _fake(
    root: Path, pid: int, comm: str, *, ppid: int = 1, flags: int = 0, cmd: bytes = b""
) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(_stat(pid, comm, "S", ppid, flags, 4242, 1))
    (d / "status").write_text("Name:\tx\nCpus_allowed_list:\t1\nVmRSS:\t  2048 kB\n")
    (d / "cmdline").write_bytes(cmd)
    (d / "cgroup").write_text("12:cpuset:/x\n0::/gpupool-w/l-1\n")


def test_names_with_spaces_and_parentheses_do_not_shift_the_fields() -> None:
    name, state, ppid, flags, start, cpu = parse_stat(_stat(7, "a (b) c)", "R", 3, 64, 99, 5))
    assert (name, state, ppid, flags, start, cpu) == ("a (b) c)", "R", 3, 64, 99, 5)


def test_a_fake_proc_tree_reads_back(tmp_path: Path) -> None:
    _fake(tmp_path, 10, "my (odd) name", cmd=b"sleep\x00600\x00")
    _fake(tmp_path, 11, "kworker/0:1", ppid=2, flags=PF_KTHREAD)
    (tmp_path / "12").mkdir()  # vanished mid-read: no files
    (tmp_path / "self").mkdir()
    procs = {p.pid: p for p in list_processes(tmp_path)}
    assert set(procs) == {10, 11}
    p = procs[10]
    assert (p.name, p.cmdline, p.cgroup2) == ("my (odd) name", "sleep 600", "/gpupool-w/l-1")
    assert p.cpus_allowed == frozenset({1}) and p.rss_kb == 2048 and p.last_cpu == 1
    assert p.identity == (10, 4242) and not p.kernel_thread
    assert procs[11].kernel_thread


def test_the_real_proc_has_this_process() -> None:
    me = {p.pid: p for p in list_processes()}[os.getpid()]
    assert me.cpus_allowed == frozenset(os.sched_getaffinity(0))
    assert me.exe and Path(me.exe).exists()
