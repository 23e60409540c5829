"""The same job against a real S3 API: moto's server on loopback, s3fs, buckets in and out."""
from __future__ import annotations

import io
import json
import tarfile

import pyarrow.dataset as ds
import pytest
import soundfile as sf

from pipelines.io.storage import OutputError
from pipelines.job import run_job
from pipelines.stages.discover import Discover, InputError
from schemas.config import DiscoverConfig
from tests.conftest import NO_SPEECH, moto_s3, small_units_config


@pytest.fixture(scope="module")
def s3(clips):
    with moto_s3() as fs:
        fs.mkdir("raw-audio")
        fs.mkdir("corpus")
        for path in clips.iterdir():
            fs.put_file(str(path), f"raw-audio/incoming/{path.name}")
        yield fs


def test_job_reads_and_writes_buckets(s3, local_ray):
    summary = run_job(small_units_config("s3://raw-audio/incoming/", "s3://corpus/v1"))
    assert summary["complete"] and summary["counts"]["input_files"] == 11
    s3.invalidate_cache()
    shards = sorted(s3.glob("corpus/v1/shards/*.tar"))
    assert len(shards) == summary["counts"]["shards"] > 1
    assert not [p for p in s3.find("corpus/v1") if ".tmp-" in p or "_probe-" in p]
    index = ds.dataset("corpus/v1/index", filesystem=s3, format="parquet").to_table()
    assert index.num_rows == summary["counts"]["samples"]
    assert all(u.startswith("s3://raw-audio/incoming/") for u in index.column("source_uri").to_pylist())
    assert not {u.rsplit("/", 1)[-1] for u in index.column("source_uri").to_pylist()} & NO_SPEECH
    with s3.open(shards[0], "rb") as fh, tarfile.open(fileobj=fh) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    audio = next(v for k, v in members.items() if k.endswith(".flac"))
    meta = json.loads(next(v for k, v in members.items() if k.endswith(".json")))
    wave, rate = sf.read(io.BytesIO(audio))
    assert rate == 24000 and wave.ndim == 1 and meta["text"]
    on_s3 = json.loads(s3.cat_file("corpus/v1/summary.json"))
    assert on_s3["counts"] == summary["counts"]
    for path in s3.find("corpus/v1"):  # summary, ledger, Parquet (data and metadata), shard bytes
        content = s3.cat_file(path)
        assert b"voxmill-test-secret" not in content and b"voxmill-test-key" not in content, path


def test_missing_bucket_is_a_clear_error_before_work(s3, local_ray, clips):
    with pytest.raises(InputError, match="not found"):
        Discover(DiscoverConfig())("s3://no-such-bucket/raw/")
    with pytest.raises(OutputError, match="cannot write to output s3://no-such-bucket"):
        run_job(small_units_config(str(clips), "s3://no-such-bucket/out"))
