"""The Prefect flow on an ephemeral Prefect server: it runs the job and publishes a summary artifact."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

from flows.prepare import prepare_corpus


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


async def _artifact_markdown(key: str) -> str:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0].data


def test_flow_runs_the_job_and_publishes_its_summary(prefect_server, local_ray, clips, tmp_path):
    state = prepare_corpus(input=str(clips), output=str(tmp_path / "out"),
                           overrides={"engine.unit_minutes": 0.5, "audio.sample_rate": 16000},
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


def test_flow_fails_fast_on_a_bad_config(prefect_server, tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("input: /nowhere\noutput: /tmp/x\nvad: {min_seconds: 30, max_seconds: 20}\n")
    state = prepare_corpus(config_path=str(bad), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="min_seconds must be below"):
        state.result()
