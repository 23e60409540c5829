"""The output-format plug-in point: a second format is one class (`FilesSink` below) plus one line
of config (`shards.format: tests.pipelines.sinks.test_sinks:FilesSink`). The same job in both formats holds the
same samples, byte for byte, and every reader (loader, random access, report clips, refilter) and
`--restart` go through the output's own sink."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Collection, Iterable, Iterator, Optional

import pytest

from pipelines import report
from pipelines.io import storage
from pipelines.job import run_job
from pipelines.loader import IndexedShards, SpeechShards, read_index
from pipelines.refilter import refilter
from pipelines.sinks.base import SINKS, TRAINING, Sample, sink_class
from pipelines.state import jobstate
from schemas.config import ShardConfig, load_job_config
from tests.fakes import FAKE_ASR

FILES_SINK = "tests.pipelines.sinks.test_sinks:FilesSink"


class FilesSink:
    """A folder per unit and a file per stored member: `shards/unit-000012/KEY.flac` + `KEY.json`."""

    def __init__(self, config: ShardConfig, output: str, storage_options: Optional[dict] = None):
        self.config, self.output = config, output
        self.fs, root = storage.filesystem(output, storage_options)
        self.root = root.rstrip("/")

    def write(self, unit: int, samples: Iterable[Sample], folder: str = TRAINING) -> list[tuple[str, str]]:
        shard, placed = f"{folder}/unit-{unit:06d}", []
        for sample in samples:
            members = {sample.ext or self.config.audio_format: sample.audio, "json": json.dumps(sample.meta).encode()}
            for ext, data in members.items():
                storage.write_bytes(storage.join(self.output, shard, f"{sample.key}.{ext}"), data)
            placed.append((shard, sample.key))
        return placed

    def read(self, shard: str, keys: Optional[Collection[str]] = None) -> Iterator[dict]:
        stored: dict[str, dict[str, str]] = {}
        for path in sorted(self.fs.ls(f"{self.root}/{shard}", detail=False)):
            key, _, ext = path.rsplit("/", 1)[-1].partition(".")
            stored.setdefault(key, {})[ext] = path
        for key in sorted(stored) if keys is None else keys:
            yield {"__key__": key, **{ext: self.fs.cat_file(path) for ext, path in stored[key].items()}}

    def files(self, folder: str = TRAINING) -> list[str]:
        return sorted(path[len(self.root) + 1:] for path in self.fs.glob(f"{self.root}/{folder}/unit-*/*"))


def _config(clips: Path, output: Path, **overrides):
    return load_job_config(str(clips), str(output), overrides={
        "engine.unit_minutes": 0.25, "asr.backend": FAKE_ASR,
        "engine.executor": "tests.pipelines.executor.test_executor:SerialExecutor", **overrides})


@pytest.fixture(scope="module")
def outputs(clips, tmp_path_factory) -> tuple[Path, Path]:
    """The same job written as WebDataset tars and as FilesSink folders (no Ray, no model)."""
    root = tmp_path_factory.mktemp("sinks")
    tars, files = root / "tars", root / "files"
    assert run_job(_config(clips, tars))["complete"]
    assert run_job(_config(clips, files, **{"shards.format": FILES_SINK}))["complete"]
    return tars, files


def _rows(output: Path) -> list[dict]:
    return sorted(read_index(str(output)).drop(["shard"]).to_pylist(), key=lambda r: r["key"])


def test_a_new_format_holds_the_same_samples_byte_for_byte(outputs):
    tars, files = outputs
    assert not list(files.rglob("*.tar")) and list(tars.rglob("*.tar"))
    rows = _rows(files)
    assert rows and rows == _rows(tars)  # the index is the format's business only in its shard column
    assert {r["shard"] for r in read_index(str(files), columns=["shard"]).to_pylist()} <= {
        str(p.relative_to(files)) for p in (files / "shards").iterdir()}
    in_tars, in_files = IndexedShards(str(tars)), IndexedShards(str(files))
    for row in rows:
        a, b = in_tars.raw(row["key"]), in_files.raw(row["key"])
        assert a["flac"] == b["flac"] and json.loads(a["json"]) == json.loads(b["json"])
        assert b["flac"] == (files / in_files.shard_of[row["key"]] / f"{row['key']}.flac").read_bytes()


def test_every_reader_goes_through_the_outputs_sink(outputs, tmp_path):
    _, files = outputs
    keys = sorted(r["key"] for r in _rows(files))
    streamed = list(SpeechShards(str(files), shuffle=0, sample_rate=16000))
    assert sorted(u["key"] for u in streamed) == keys and all(u["waveform"].numel() for u in streamed)
    index = read_index(str(files), columns=["key", "shard", "duration"]).to_pylist()
    shown = [report.SampleRow(key=r["key"], shard=r["shard"], duration=r["duration"], language=None, text="",
                              scores={}) for r in index[:2]]
    report.copy_audio(str(files), str(tmp_path / "report"), shown)
    for row in shown:
        assert (tmp_path / "report" / row.audio).read_bytes() == IndexedShards(str(files)).raw(row.key)["flac"]


def test_refilter_reads_and_writes_the_sources_format(outputs, tmp_path):
    tars, files = outputs
    change = {"min_chars_per_second": 2.5}
    from_tars = refilter(str(tars), change, str(tmp_path / "tars"))
    from_files = refilter(str(files), change, str(tmp_path / "files"))
    assert from_files["counts"]["samples"] == from_tars["counts"]["samples"]
    assert from_files["refilter"]["dropped"] == from_tars["refilter"]["dropped"]
    assert _rows(tmp_path / "files") == _rows(tmp_path / "tars")
    assert not list((tmp_path / "files").rglob("*.tar"))


def test_restart_deletes_the_formats_own_files(outputs, tmp_path):
    _, files = outputs
    copy = tmp_path / "out"
    shutil.copytree(files, copy)
    (copy / "notes.txt").write_text("the user's")
    jobstate.clear(str(copy))
    assert sorted(p.name for p in copy.iterdir()) == ["_ledger", "notes.txt"]  # the lease is never cleared
    assert all(p.name.startswith("lease-") for p in (copy / "_ledger").iterdir())


def test_formats_are_named_in_the_config_and_fingerprinted_only_when_not_the_default(tmp_path):
    assert SINKS["webdataset"] == "pipelines.sinks.webdataset:WebDatasetSink"
    assert sink_class(FILES_SINK) is FilesSink
    with pytest.raises(ValueError, match="shards.format 'parquet': not one of webdataset"):
        sink_class("parquet")
    default = load_job_config("/in", "/out")
    assert "format" not in jobstate.output_settings(default)["shards"]  # outputs made before it keep their fingerprint
    other = load_job_config("/in", "/out", overrides={"shards.format": FILES_SINK})
    job = {"fingerprint": jobstate.fingerprint(jobstate.output_settings(default)),
           "settings": jobstate.output_settings(default)}
    assert jobstate.changed_settings(job, jobstate.output_settings(other)) == [
        f"shards.format: None -> {FILES_SINK!r}"]
