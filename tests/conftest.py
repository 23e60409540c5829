"""Shared fixtures: a copy of the bundled real clips, one local Ray, one finished job to inspect,
one Prefect server.

Jobs here run the fake ASR backend (`tests/fakes.py`) unless a test is about ASR: it passes
`backend=REAL_ASR` (the real model stays in the end-to-end tests that check transcripts, which
are marked `slow`)."""
from __future__ import annotations

import os
import socket


# Ray workers read fsspec's S3 settings from the environment at import, so point `s3://` at the
# loopback moto server (see test_s3.py) before anything starts; fake credentials only.
def free_port() -> int:
    """A loopback port nobody holds right now (for the servers the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


S3_PORT = free_port()
# The fake ASR backend (`tests.fakes`) is imported by name where a job runs: the local Ray's workers
# and child `voxmill` processes inherit this environment, so the checkout is on their path too.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                     if p and p != _ROOT]])
os.environ.update({
    "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "voxmill-test-key",
    "AWS_SECRET_ACCESS_KEY": "voxmill-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
})

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import ray

from pipelines.job import run_job
from schemas.config import JobConfig, load_job_config
from tests.fakes import FAKE_ASR

DEMO = Path(__file__).resolve().parent.parent / "demo" / "real-speech"
NO_SPEECH = {"stereo.mp3", "stereo.opus", "stereo.sph"}


def references() -> dict[str, dict]:
    lines = (DEMO / "references.jsonl").read_text().splitlines()
    return {row["file"]: row for row in map(json.loads, lines)}


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """A private copy of the real clips (tests never write next to the originals)."""
    target = tmp_path_factory.mktemp("clips") / "real-speech"
    shutil.copytree(DEMO, target)
    return target


@pytest.fixture(scope="session")
def referenced_clips(tmp_path_factory) -> Path:
    """Another copy of the real clips, with each reference transcript beside its audio as LibriSpeech
    ships it (`<stem>.txt`), for the jobs that score the ASR against references."""
    target = tmp_path_factory.mktemp("referenced") / "real-speech"
    shutil.copytree(DEMO, target)
    for name, row in references().items():
        if row["text"]:
            (target / name).with_suffix(".txt").write_text(row["text"] + "\n")
    return target


@contextmanager
def moto_s3(port: int = S3_PORT, **client: object) -> Iterator:
    """A real S3 API on loopback (moto's server, where the environment points s3://) and an s3fs
    client of it; the server stops on exit."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield s3fs.S3FileSystem(client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"}, **client)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the session (starting one costs ~20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield




@pytest.fixture(scope="session")
def multilingual_model(tmp_path_factory) -> Path:
    """A multilingual CTranslate2 Whisper base directory, assembled from the two PyPI wheels that
    ship it (PyPI's size limit splits model.bin in two): the small files of part 1 and model.bin =
    part 1's model.bin.part1 followed by part 2's model.bin.part2."""
    from benchmarks.model_costs import real_base_dir

    try:
        return real_base_dir(tmp_path_factory.mktemp("whisper-base"))
    except ModuleNotFoundError as err:
        pytest.fail(f"{err.name} is missing: install the test extra (pip install -e '.[test]')")


REAL_ASR = "faster-whisper"


def small_units_config(input_url: str, output_url: str, backend: str = FAKE_ASR, **overrides: object) -> JobConfig:
    """Units of ~15 s of audio, so the 11 clips spread over several units and shards; the fake ASR
    backend unless `backend` says otherwise."""
    return load_job_config(input_url, output_url,
                           overrides={"engine.unit_minutes": 0.25, "asr.backend": backend, **overrides})


@pytest.fixture(scope="session")
def finished_job(clips, local_ray, tmp_path_factory) -> tuple[JobConfig, dict]:
    """The clips through the whole job with the fake ASR backend (test_job.py's `real_job` runs the real model)."""
    output = tmp_path_factory.mktemp("job") / "out"
    config = small_units_config(str(clips), str(output))
    return config, run_job(config)
