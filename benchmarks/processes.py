"""Process trees from /proc: find what a driver started (its Ray) and kill exactly that.

Shared by the crash tests and the benchmarks that kill or measure a `voxmill run` subprocess.
Pids are paired with their start time, so a pid the kernel reused is never touched.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Optional


def stat(pid: int) -> Optional[tuple[int, int]]:
    """(parent pid, start time) of a live process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of `root` (a driver's GCS, raylet, workers) -> its start time."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := stat(int(entry.name))):
            parents[int(entry.name)] = found
    tree, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in parents.items() if ppid == parent]
        tree.update({pid: parents[pid][1] for pid in children})
        frontier += children
    return tree


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def kill(processes: dict[int, int]) -> list[int]:
    """SIGKILL exactly these processes (pid -> start time); returns the pids killed."""
    killed = []
    for pid, started in processes.items():
        current = stat(pid)
        if current and current[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    return killed


class Sessions:
    """Processes started each in a session of their own (servers, Ray nodes, workers), logging to
    LOGS/NAME.log. `stop` ends them newest first: SIGTERM to the group, SIGKILL after `grace`, and
    then whatever they had started in sessions of their own (a worker's flow run and its Ray),
    noted before the parent went. Nothing else on the machine is touched."""

    def __init__(self, logs: Path, cwd: Optional[Path] = None):
        self.logs = logs
        self.cwd = cwd
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, cwd=self.cwd, env=env, stdout=(self.logs / f"{name}.log").open("w"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(proc)
        return proc

    def tail(self, name: str, chars: int = 4000) -> str:
        log = self.logs / f"{name}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self, grace: float = 30.0) -> None:
        for proc in reversed(self.started):
            if proc.poll() is not None:
                continue
            stragglers = descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            kill(stragglers)
