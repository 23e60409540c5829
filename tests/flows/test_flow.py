"""The Prefect flow on an ephemeral Prefect server: it runs the job and publishes a summary artifact."""
from __future__ import annotations

import asyncio
import json

import pyarrow.dataset as ds
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import ArtifactSort, LogSort
from prefect.logging.handlers import APILogWorker

from flows.prepare import prepare_corpus
from tests.fakes import OVERRIDES as FAKE_ASR

pytestmark = pytest.mark.slow  # end to end: flow runs on a Prefect server


async def _artifact_markdown(key: str) -> str:
    """The latest artifact under `key` (the Prefect server is the session's: other tests publish too)."""
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                            sort=ArtifactSort.CREATED_DESC)
    return found[0].data


async def _logs(flow_run_id) -> list:
    async with get_client() as client:
        return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                      sort=LogSort.TIMESTAMP_ASC)


def _plan_overrides(tmp_path) -> dict:
    """Plan files under tmp_path, and the fake ASR backend (calibration and job): the flow is under test."""
    return {**FAKE_ASR, "plan.profiles_dir": str(tmp_path / "profiles"), "plan.history_path": str(tmp_path / "history.jsonl")}


def test_flow_plans_runs_and_publishes(prefect_server, local_ray, clips, tmp_path):
    state = prepare_corpus(input=str(clips), output=str(tmp_path / "out"),
                           overrides={"engine.unit_minutes": 0.5, "audio.sample_rate": 16000,
                                      "engine.progress_seconds": 1, **_plan_overrides(tmp_path)},
                           return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["counts"]["samples"] > 0 and summary["config"]["audio"]["sample_rate"] == 16000
    index = ds.dataset(str(tmp_path / "out/index"), format="parquet").to_table()
    assert index.num_rows == summary["counts"]["samples"]
    assert set(index.column("sample_rate").to_pylist()) == {16000}
    assert json.loads((tmp_path / "out/summary.json").read_text())["counts"] == summary["counts"]
    markdown = asyncio.run(_artifact_markdown("voxmill-summary"))
    assert f"| samples | {summary['counts']['samples']} |" in markdown
    plan = summary["plan"]
    assert plan["input"]["files"] == 11 and plan["bottleneck"] in {"prep", "asr", "write"}
    assert "| bottleneck |" in asyncio.run(_artifact_markdown("voxmill-plan"))
    assert list((tmp_path / "profiles").glob("*.json")), "calibration saves this machine's profile"
    record = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])
    assert record["actual_wall_seconds"] == summary["wall_seconds"]
    assert record["predicted_wall_seconds"] == plan["wall_seconds"]
    APILogWorker.drain_all(timeout=5)  # the run logs still queued in this process
    progress = [log for log in asyncio.run(_logs(state.state_details.flow_run_id)) if log.message.startswith("progress: ")]
    assert len(progress) >= 2 and progress[-1].message.endswith("ETA done"), [log.message for log in progress]
    # live: a line every engine.progress_seconds while the job ran, not all at its end
    assert (progress[-1].timestamp - progress[0].timestamp).total_seconds() >= 1, [log.timestamp for log in progress]


def test_flow_stops_before_work_when_the_plan_breaks_a_limit(prepare_limits):
    state, output = prepare_limits
    assert state.is_failed()
    with pytest.raises(Exception, match="exceeds max_wall_hours"):
        state.result()
    assert not (output / "shards").exists() and not (output / "summary.json").exists()


@pytest.fixture
def prepare_limits(prefect_server, local_ray, clips, tmp_path):
    output = tmp_path / "out"
    state = prepare_corpus(input=str(clips), output=str(output), return_state=True,
                           overrides={"plan.max_wall_hours": 0.0001, **_plan_overrides(tmp_path)})
    return state, output


def test_flow_fails_fast_on_a_bad_config(prefect_server, tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("input: /nowhere\noutput: /tmp/x\nvad: {min_seconds: 30, max_seconds: 20}\n")
    state = prepare_corpus(config_path=str(bad), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="^invalid job config: vad.min_seconds must be below vad.max_seconds$"):
        state.result()  # one line naming the key, not a pydantic dump
