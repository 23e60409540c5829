"""The whole job on the real clips: transcripts (the real model), audio, accounting, and both shard
readers (the fake ASR backend: `finished_job`)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import jiwer
import numpy as np
import pyarrow.dataset as ds
import pytest
import soundfile as sf
import webdataset as wds

from pipelines.job import run_job
from pipelines.state import jobstate
from pipelines.state.jobstate import ConfigChanged
from tests.conftest import NO_SPEECH, REAL_ASR, references, small_units_config


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def _index(output: str):
    return ds.dataset(f"{output}/index", format="parquet").to_table()


def _shard_samples(output: str) -> dict[str, dict]:
    urls = sorted(str(p) for p in Path(output, "shards").glob("shard-*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}


@pytest.fixture(scope="module")
def real_job(referenced_clips, local_ray, tmp_path_factory):
    """The clips (their references beside them as .txt) through the whole job with the real model
    (faster-whisper tiny.en), word timestamps stored."""
    config = small_units_config(str(referenced_clips), str(tmp_path_factory.mktemp("real") / "out"),
                                backend=REAL_ASR, **{"asr.word_timestamps": True})
    return config, run_job(config)


@pytest.mark.slow
def test_transcripts_match_references(real_job):
    config, summary = real_job
    assert summary["complete"] and summary["config"]["asr"]["backend"] == REAL_ASR
    index = _index(config.output).to_pylist()
    refs = {name: row["text"] for name, row in references().items() if row["text"]}
    hyps = {}
    for name in refs:
        rows = sorted((r for r in index if Path(r["source_uri"]).name == name), key=lambda r: r["start"])
        hyps[name] = " ".join(r["text"] for r in rows)
    wer = jiwer.wer([_norm(refs[n]) for n in refs], [_norm(hyps[n]) for n in refs])
    assert wer < 0.2, (wer, hyps)
    assert _norm(hyps["2412-153948-0000.flac"]).startswith("if the reader will excuse me")


@pytest.mark.slow
def test_references_beside_the_clips_are_kept_split_and_scored(real_job):
    """Each clip's .txt (LibriSpeech-style) is its reference: a clip of one segment gets it whole, a clip
    VAD cut in several gets it split by aligning to the ASR words (the shares join back into it), and
    every segment is scored against its share; clips without a reference have none."""
    config, _ = real_job
    index = _index(config.output).to_pylist()
    refs = references()
    by_clip: dict[str, list[dict]] = {}
    for row in sorted(index, key=lambda r: r["start"]):
        by_clip.setdefault(Path(row["source_uri"]).name, []).append(row)
    for name, rows in by_clip.items():
        text = refs[name]["text"]
        if text is None:
            assert all(r["reference"] is None and r["wer"] is None and r["cer"] is None for r in rows), name
            continue
        assert " ".join(r["reference"] for r in rows) == text, name
        for row in rows:
            assert row["wer"] == pytest.approx(jiwer.wer(_norm(row["reference"]), _norm(row["text"])), abs=1e-3)
    assert [r["reference"] for r in by_clip["jfk.flac"]] == [  # three segments: the reference split at the pauses
        "AND SO MY FELLOW AMERICANS", "ASK NOT",
        "WHAT YOUR COUNTRY CAN DO FOR YOU ASK WHAT YOU CAN DO FOR YOUR COUNTRY"]
    assert [r["reference"] for r in by_clip["2412-153948-0000.flac"]] == [refs["2412-153948-0000.flac"]["text"]]
    assert max(r["wer"] for r in by_clip["2412-153948-0000.flac"] + by_clip["jfk.flac"]) < 0.2
    sample = _shard_samples(config.output)[by_clip["jfk.flac"][0]["key"]]
    assert json.loads(sample["json"])["reference"] == by_clip["jfk.flac"][0]["reference"]


@pytest.mark.slow
def test_word_timestamps_cover_each_transcript_in_order(real_job):
    config, _ = real_job
    samples = _shard_samples(config.output)
    for row in _index(config.output).to_pylist():
        words = row["words"]
        assert _norm(" ".join(w["word"] for w in words)) == _norm(row["text"]), row["key"]
        assert all(0 <= w["start"] <= w["end"] <= row["duration"] + 1e-3 and 0 < w["probability"] <= 1
                   for w in words)
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)
        stored = json.loads(samples[row["key"]]["json"])["words"]
        assert [(w["word"], w["start"], w["end"]) for w in stored] == [
            (w["word"], pytest.approx(w["start"], abs=1e-6), pytest.approx(w["end"], abs=1e-6)) for w in words]


@pytest.mark.slow
def test_a_wer_ceiling_drops_segments_with_the_reason_recorded(real_job, tmp_path):
    """`quality.max_wer` on the real clips (by refilter, no second ASR): LJ002-0020's "In 1813." against
    "IN EIGHTEEN THIRTEEN" (numbers are not spelled out) is dropped, with its metric, value and reason."""
    from pipelines.io import tables
    from pipelines.refilter import refilter

    config, _ = real_job
    refilter(config.output, {"max_wer": 0.5}, str(tmp_path / "strict"))
    dropped = [r for r in tables.read_parts(str(tmp_path / "strict"), "rejects").to_pylist() if r["metric"] == "wer"]
    assert dropped and all(r["value"] > 0.5 and r["reason"] == f"wer {r['value']:.3g} > 0.5" for r in dropped)
    assert "LJ002-0020.wav" in {Path(r["source_uri"]).name for r in dropped}
    assert all(r["reference"] and r["text"] for r in dropped)
    kept = _index(str(tmp_path / "strict")).to_pylist()
    assert kept and all(r["wer"] is None or r["wer"] <= 0.5 for r in kept)


def test_test_tones_give_no_sample_but_a_reject(finished_job):
    config, _ = finished_job
    sources = {Path(u).name for u in _index(config.output).column("source_uri").to_pylist()}
    assert not sources & NO_SPEECH
    rejects = ds.dataset(f"{config.output}/rejects", format="parquet").to_table().to_pylist()
    rejected = {Path(r["source_uri"]).name: r for r in rejects}
    for name in NO_SPEECH:
        assert rejected[name]["stage"] == "vad" and rejected[name]["reason"] == "no speech found"


def test_every_input_is_accounted_for_and_keys_are_unique(finished_job, clips):
    config, summary = finished_job
    index = _index(config.output)
    keys = index.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == summary["counts"]["samples"] > 0
    rejects = ds.dataset(f"{config.output}/rejects", format="parquet").to_table()
    seen = set(index.column("source_uri").to_pylist()) | set(rejects.column("source_uri").to_pylist())
    inputs = {str(p) for p in clips.iterdir() if p.suffix not in {".md", ".jsonl"}}
    assert seen == inputs
    assert summary["counts"]["units"] > 2 and summary["counts"]["shards"] == len(list(Path(config.output, "shards").iterdir()))


def test_shard_audio_is_mono_at_target_rate_and_keeps_segment_duration(finished_job):
    config, _ = finished_job
    samples = _shard_samples(config.output)
    index = {r["key"]: r for r in _index(config.output).to_pylist()}
    assert set(samples) == set(index)
    for key, sample in samples.items():
        audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        meta = json.loads(sample["json"])
        assert rate == config.audio.sample_rate == meta["sample_rate"] and audio.ndim == 1
        assert abs(len(audio) / rate - (meta["end"] - meta["start"])) <= 0.010
        assert meta["text"] == index[key]["text"] and meta["source_uri"] == index[key]["source_uri"]
        assert np.abs(audio).max() > 0.01


def test_output_segment_is_the_source_audio_at_its_times(finished_job, clips):
    config, _ = finished_job
    row = next(r for r in _index(config.output).to_pylist() if r["source_uri"].endswith("2412-153948-0000.flac"))
    audio, rate = sf.read(io.BytesIO(_shard_samples(config.output)[row["key"]]["flac"]), dtype="float32")
    source, src_rate = sf.read(clips / "2412-153948-0000.flac", dtype="float32")
    cut = source[round(row["start"] * src_rate): round(row["end"] * src_rate)]
    resampled = np.interp(np.arange(len(cut)) * rate / src_rate, np.arange(len(audio)), audio)
    assert np.corrcoef(cut, resampled)[0, 1] > 0.95


def test_huggingface_datasets_loads_the_shards(finished_job, tmp_path):
    """By the output's dataset card, and decoded with soundfile (no torchcodec): tests/pipelines/test_readers.py."""
    from datasets import load_dataset

    from pipelines.loader import hf_dataset

    config, summary = finished_job
    data = load_dataset(config.output, split="train", cache_dir=str(tmp_path))
    assert len(data) == summary["counts"]["samples"] and data[0]["json"]["text"]
    row = hf_dataset(config.output, cache_dir=str(tmp_path))[0]
    assert row["text"] and row["audio"]["sampling_rate"] == config.audio.sample_rate


def test_summary_reports_counts_hours_and_stages(finished_job):
    config, summary = finished_job
    on_disk = json.loads(Path(config.output, "summary.json").read_text())
    assert on_disk["counts"] == summary["counts"] and summary["complete"]
    assert summary["counts"]["input_files"] == 11 and summary["counts"]["rejects"] >= 3
    assert 0.015 < summary["input_hours"] < 0.02 and 0 < summary["output_hours"] < summary["input_hours"]
    assert {"decode", "resample", "vad", "asr", "write"} <= set(summary["stage_seconds"])
    assert summary["config"]["audio"]["sample_rate"] == 24000 and summary["versions"]["faster-whisper"]


def test_rerun_skips_done_units_and_changes_nothing(finished_job):
    config, first = finished_job
    before = {p: p.read_bytes() for p in Path(config.output, "shards").iterdir()}
    again = run_job(config)
    assert again["counts"]["units_processed"] == 0
    assert again["counts"]["units_resumed"] == first["counts"]["units"]
    assert again["counts"]["samples"] == first["counts"]["samples"]
    assert {p: p.read_bytes() for p in Path(config.output, "shards").iterdir()} == before


def test_changed_settings_on_the_same_output_are_refused(finished_job):
    config, _ = finished_job
    changed = config.model_copy(update={"audio": config.audio.model_copy(update={"sample_rate": 16000})})
    with pytest.raises(ConfigChanged, match=r"audio\.sample_rate: 24000 -> 16000"):
        run_job(changed)
    faster = config.model_copy(update={"engine": config.engine.model_copy(update={"prep_workers": 1})})
    assert run_job(faster)["counts"]["units_processed"] == 0  # resources do not change the output


def test_status_reports_a_complete_output(finished_job):
    config, summary = finished_job
    state = jobstate.status(config.output)
    assert state["complete"] and state["units_done"] == state["units"] == summary["counts"]["units"]
    assert state["units_pending"] == 0 and state["samples"] == summary["counts"]["samples"]
    assert state["rejects"] == summary["counts"]["rejects"]
    assert state["done_hours"] == pytest.approx(summary["input_hours"])
