"""deploy/prefect.yaml on a real local Prefect server, the way deploy/README.md tells a user to do it:
`prefect server start`, `prefect work-pool create`, `prefect deploy --all`, `prefect worker start`,
then `prefect deployment run prepare-corpus/adhoc-corpus ... --watch`. The worker runs the flow in
its own subprocess (the deployment's pull step changes into $VOXMILL_HOME, where `config_path:
deploy/job.example.yaml` is found) and the shards, index and summary must be on disk afterwards.

Everything here runs on loopback with its own PREFECT_HOME (sqlite database there). Each process
the test starts gets its own session; teardown stops those groups, plus anything they started
in sessions of their own (the worker's flow-run process and its local Ray), and nothing else.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jiwer
import pyarrow.dataset as ds
import pytest
import yaml

from benchmarks.processes import Sessions
from tests.conftest import NO_SPEECH, free_port, references
from tests.fakes import ROOT

PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "voxmill-process"
RUN_TIMEOUT = 900  # s for the flow run itself; it took 45-110 s on 2 cores shared with other jobs


@pytest.fixture
def prefect(tmp_path):
    """A `prefect server start` of its own; yields (environment for the CLI, API URL, processes)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "RAY_ADDRESS"}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        # the test starts its one run by hand; the nightly cron must not add runs of its own
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Sessions(logs, cwd=ROOT)
    try:
        server = procs.start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                             "server", env)
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, f"prefect server exited:\n{procs.tail('server')}"
            try:
                if httpx.get(f"{api}/health", timeout=5).json() is True:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.time() < deadline, f"prefect server not healthy in 180 s:\n{procs.tail('server')}"
            time.sleep(1)
        yield env, api, procs
    finally:
        procs.stop()


def _cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"prefect {' '.join(args)} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_deployment_runs_on_a_local_server_and_worker(prefect, clips, tmp_path):
    env, api, procs = prefect
    project = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    job = yaml.safe_load((ROOT / "deploy" / "job.example.yaml").read_text())

    # -- deploy, as deploy/README.md says (VOXMILL_HOME unset here: the worker resolves it at run time)
    deploy_env = {k: v for k, v in env.items() if k != "VOXMILL_HOME"}
    _cli(deploy_env, "work-pool", "create", POOL, "--type", "process")
    _cli(deploy_env, "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
    deployments = {}
    for dep in project["deployments"]:
        got = httpx.get(f"{api}/deployments/name/prepare-corpus/{dep['name']}", timeout=30)
        assert got.status_code == 200, (dep["name"], got.text)
        deployments[dep["name"]] = got.json()
    assert set(deployments) == {"nightly-corpus", "adhoc-corpus"}
    nightly, adhoc = deployments["nightly-corpus"], deployments["adhoc-corpus"]
    assert {d["work_pool_name"] for d in deployments.values()} == {POOL}
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == [
        s["cron"] for s in project["deployments"][0]["schedules"]] == ["0 2 * * *"]
    assert nightly["global_concurrency_limit"]["limit"] == 1  # concurrency_limit: 1 in prefect.yaml
    assert not adhoc["schedules"] and not adhoc["global_concurrency_limit"]
    assert adhoc["entrypoint"] == "flows/prepare.py:prepare_corpus"
    assert adhoc["parameters"] == {"config_path": "deploy/job.example.yaml"}
    assert adhoc["pull_steps"] == project["pull"]  # the placeholder is kept for the worker to resolve

    # -- a worker, started somewhere else than the project (the pull step must take the run there)
    worker_dir = tmp_path / "worker-cwd"
    worker_dir.mkdir()
    # RAY_ADDRESS=local: the flow run starts a private local Ray even if a `ray start` cluster is up here
    worker_env = {**env, "VOXMILL_HOME": str(ROOT), "RAY_ADDRESS": "local"}
    worker = procs.start([PREFECT, "worker", "start", "--pool", POOL, "--name", "voxmill-test-worker"],
                         "worker", worker_env)

    # -- an ad hoc run on a copy of the real clips, small units, few workers, profiles kept in tmp
    output = tmp_path / "out"
    overrides = {"engine.unit_minutes": 0.25, "engine.prep_workers": 1, "engine.asr_actors": 1,
                 "plan.profiles_dir": str(tmp_path / "profiles"),
                 "plan.history_path": str(tmp_path / "history.jsonl")}
    started = time.time()
    run = subprocess.run(
        [PREFECT, "deployment", "run", "prepare-corpus/adhoc-corpus", "-p", f"input={clips}",
         "-p", f"output={output}", "-p", f"overrides={json.dumps(overrides)}",
         "--watch", "--watch-timeout", str(RUN_TIMEOUT)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT + 60, stdin=subprocess.DEVNULL)
    elapsed = time.time() - started
    logs = f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}\n--- worker:\n{procs.tail('worker', 8000)}"
    assert worker.poll() is None, logs
    assert run.returncode == 0, logs
    match = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout)
    assert match, logs
    flow_run = httpx.get(f"{api}/flow_runs/{match.group(1)}", timeout=30).json()
    assert flow_run["state_type"] == "COMPLETED", (flow_run["state"], logs)
    assert flow_run["deployment_id"] == adhoc["id"] and flow_run["work_pool_name"] == POOL
    assert flow_run["parameters"]["config_path"] == "deploy/job.example.yaml"
    artifacts = httpx.post(f"{api}/artifacts/filter", timeout=30,
                           json={"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}).json()
    assert {a["key"] for a in artifacts} >= {"voxmill-plan", "voxmill-summary"}
    print(f"flow run {flow_run['name']}: {elapsed:.0f} s from `deployment run` to Completed")

    # -- the output on disk
    summary = json.loads((output / "summary.json").read_text())
    counts = summary["counts"]
    extensions = tuple(f".{e}" for e in job["discover"]["extensions"])
    inputs = sorted(p.name for p in clips.iterdir() if p.name.endswith(extensions))
    assert summary["complete"] and counts["units_failed"] == 0 and counts["units_not_started"] == 0
    assert counts["input_files"] == len(inputs) and counts["units"] > 1
    assert summary["plan"]["input"]["files"] == len(inputs)  # the plan step ran, calibrated in tmp
    assert list((tmp_path / "profiles").glob("*.json"))
    # job.example.yaml came from config_path, relative to $VOXMILL_HOME: its sample rate, not the default
    assert summary["config"]["audio"]["sample_rate"] == job["audio"]["sample_rate"] == 24000
    assert summary["config"]["engine"]["unit_minutes"] == 0.25

    index = ds.dataset(str(output / "index"), format="parquet").to_table().to_pylist()
    assert len(index) == counts["samples"] > 0
    assert all(row["text"].strip() for row in index)
    assert {row["sample_rate"] for row in index} == {24000}
    by_file: dict[str, list[dict]] = {}
    for row in index:
        by_file.setdefault(Path(row["source_uri"]).name, []).append(row)
    assert set(by_file) == set(inputs) - NO_SPEECH
    refs = {name: row["text"] for name, row in references().items() if row["text"] and name in by_file}
    hyps = {name: " ".join(r["text"] for r in sorted(by_file[name], key=lambda r: r["start"])) for name in refs}
    wer = jiwer.wer([_norm(refs[n]) for n in refs], [_norm(hyps[n]) for n in refs])
    assert wer < 0.2, (wer, hyps)

    shards = sorted(p.name for p in (output / "shards").glob("shard-*.tar"))
    assert len(shards) == counts["shards"] >= 1
    assert {Path(row["shard"]).name for row in index} == set(shards)
    assert all((output / "shards" / name).stat().st_size > 0 for name in shards)
