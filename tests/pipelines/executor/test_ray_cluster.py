"""A real two-node Ray cluster on this machine (head + one worker node, own ports and temp dirs):
the CLI sends a job to it through RAY_ADDRESS and the units are prepared on both nodes.

Ray 2.52+ clusters started with `ray start` use token authentication; every process here (both
nodes and the CLI driver) gets one fresh token through RAY_AUTH_TOKEN, so nothing is read from or
written to ~/.ray/auth_token, which other Ray clusters on the machine may share.

Only the processes this test starts are stopped (their sessions), never `ray stop`, which
would kill every Ray on the machine."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.processes import Sessions
from tests.conftest import free_port
from tests.fakes import FAKE_ASR, FAKE_ASR_ENV, ROOT

RAY = str(Path(sys.executable).with_name("ray"))


def _ray_start(nodes: Sessions, name: str, env: dict[str, str], *args: str) -> None:
    nodes.start([RAY, "start", "--block", "--disable-usage-stats", *args], name, env)


def _wait_for_nodes(address: str, count: int, env: dict[str, str], nodes: Sessions, timeout: float = 180) -> None:
    probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            out = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True,
                                 env=env, timeout=60)
        except subprocess.TimeoutExpired:
            continue
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(3)
    raise TimeoutError(f"Ray cluster at {address} did not reach {count} nodes:\n{nodes.tail('head')}\n"
                       f"{nodes.tail('node2')}")


def _node_ports() -> list[str]:
    """A node's own ports, each free now. Every port Ray would otherwise default is set too: a port
    picked free from the ephemeral range can be a default's (the dashboard agent's 52365 was once)."""
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}"]


@pytest.mark.slow
def test_cli_job_runs_on_two_nodes(clips, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    # FAKE_ASR_ENV: the nodes' workers import the fake ASR backend (tests.fakes) from this checkout
    env = {**os.environ, **FAKE_ASR_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="vxray-")  # short: Ray's socket paths must fit in 107 bytes
    nodes = Sessions(tmp_path)
    try:
        # 2 logical CPUs per node: one shared by the node's two one-thread ASR actors, one for prep
        _ray_start(nodes, "head", env, "--head", f"--port={port}", "--num-cpus=2", '--resources={"head": 1}',
                   "--include-dashboard=false", f"--temp-dir={temp_dir}",
                   f"--ray-client-server-port={free_port()}", *_node_ports())
        time.sleep(5)
        _ray_start(nodes, "node2", env, f"--address={address}", "--num-cpus=2", '--resources={"node2": 1}',
                   *_node_ports())
        _wait_for_nodes(address, 2, env, nodes)
        out = tmp_path / "out"
        job = tmp_path / "job.yaml"  # ~15 s units: the 11 clips make several units to spread
        job.write_text(f"input: {clips}\noutput: {out}\nengine: {{unit_minutes: 0.25}}\nasr: {{backend: '{FAKE_ASR}'}}\n")
        run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(job), "--no-plan", "--json"],
                             cwd=ROOT, env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads(run.stdout)
        assert summary["complete"] and summary["counts"]["samples"] > 0
        assert len(summary["nodes"]) >= 2, summary["nodes"]
        assert (summary["resources"]["asr_actors"], summary["resources"]["nodes"]) == (4, 2)
    finally:
        nodes.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
