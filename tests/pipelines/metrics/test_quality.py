"""Quality scores and filters: the scores on real clips and their degraded copies, and one whole job
where a DNSMOS threshold drops real segments and an exact copy of a file is rejected as a duplicate."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import soundfile as sf
import soxr
import webdataset as wds

from pipelines.asr.whisper import Transcriber
from pipelines.executor.base import resources_for
from pipelines.job import run_job
from pipelines.metrics.dnsmos import DNSMOS_WINDOW, OnnxDnsmos, TorchDnsmos, cover_starts
from pipelines.metrics.filters import verdict
from pipelines.metrics.scorer import SCORE_NAMES, QualityScorer
from pipelines.metrics.signal import audio_hash
from pipelines.metrics.text import chars_per_second, normalise_text
from pipelines.plan.calibrate import PREP_STAGES
from pipelines.plan.estimator import predict, size_from_manifest
from pipelines.records import AsrResult, PreparedSegment, PreparedUnit, SourceFile
from pipelines.stages.commit import UnitCommitter
from pipelines.stages.prepare import Preparer
from schemas.config import QualityConfig, load_job_config
from schemas.plan import DataProfile, HardwareProfile
from schemas.tables import MANIFEST_SCHEMA
from tests.conftest import DEMO, small_units_config

CLEAN = "2412-153948-0000.flac"  # LibriSpeech read speech
SCORE_COLUMNS = (*SCORE_NAMES, "chars_per_second", "audio_hash")
THRESHOLD = 3.25  # DNSMOS ovrl (covering windows): between the LibriSpeech clips (3.33-3.42) and the rest (2.48-3.13)


def _speech(name: str) -> np.ndarray:
    audio, rate = sf.read(DEMO / name, dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), rate, 16000).astype(np.float32)


@pytest.fixture(scope="module")
def scorer() -> QualityScorer:
    scorer = QualityScorer(QualityConfig())
    scorer.setup()
    return scorer


def test_noise_lowers_dnsmos_and_snr(scorer):
    clean = _speech(CLEAN)
    noise = np.random.default_rng(0).normal(0, np.sqrt(np.mean(clean**2)), len(clean)).astype(np.float32)
    good, noisy = scorer.score([clean, clean + noise])  # 0 dB SNR
    assert good["dnsmos_ovrl"] > 3.0 and good["dnsmos_ovrl"] - noisy["dnsmos_ovrl"] > 1.0
    assert good["dnsmos_bak"] - noisy["dnsmos_bak"] > 1.5
    assert good["snr_db"] > 30 and good["snr_db"] - noisy["snr_db"] > 20


def test_clipping_and_loudness(scorer):
    clean = _speech(CLEAN)
    peak = float(np.abs(clean).max())
    plain, clipped, quiet, near_silent = scorer.score(
        [clean, np.clip(clean, -0.1 * peak, 0.1 * peak), 0.1 * clean, 0.001 * clean])
    assert plain["clipping"] < 1e-4 and clipped["clipping"] > 0.02
    assert plain["loudness_lufs"] - quiet["loudness_lufs"] == pytest.approx(20.0, abs=0.1)
    # under BS.1770's -70 LUFS absolute gate: still measured (it was null, and passed the floor)
    assert plain["loudness_lufs"] - near_silent["loudness_lufs"] == pytest.approx(60.0, abs=0.1)
    assert verdict(QualityConfig(min_dnsmos_ovrl=None), near_silent).reason.startswith("loudness_lufs -8")
    assert scorer.score([np.zeros(16000, dtype=np.float32)])[0]["loudness_lufs"] is None  # digital silence


def test_scores_do_not_depend_on_the_batch(scorer):
    """A segment scores the same alone or among others (resume redoes a unit whole, but a unit's
    batch layout must not leak into its numbers either)."""
    segments = [_speech(CLEAN), _speech("LJ002-0020.wav"), _speech("jfk.flac")]
    together = scorer.score(segments)
    assert [scorer.score([s])[0] for s in segments] == together
    assert len({r["dnsmos_ovrl"] for r in together}) == 3


def test_covering_windows_read_every_sample_and_score_like_the_reference(scorer):
    window = DNSMOS_WINDOW
    assert cover_starts(16000) == [0] and cover_starts(window) == [0]
    for samples in (window + 1, 16 * 16000, 20 * 16000 + 7):
        starts = cover_starts(samples)
        assert starts[0] == 0 and starts[-1] + window == samples  # first and last sample read
        assert max(b - a for a, b in zip(starts, starts[1:])) <= window // 2  # half-overlapping
    speech = [_speech(name) for name in (CLEAN, "LJ002-0020.wav", "jfk.flac", "ES2011a.Headset-0-40s-46s.wav")]
    reference = QualityScorer(QualityConfig(dnsmos_windows="reference"))
    reference.setup()
    covered, referenced = np.array(scorer.dnsmos(speech)), np.array(reference.dnsmos(speech))
    assert np.abs(covered - referenced).max() < 0.25 and np.abs(covered - referenced).mean() < 0.1
    windows = lambda s: sum(len(s.window_starts(len(a))) for a in speech)  # noqa: E731
    assert windows(scorer) < windows(reference)


@pytest.mark.slow  # converts the ONNX graph with onnx2torch and runs it on the CPU: ~18 s
def test_the_torch_graph_scores_like_onnxruntime(scorer):
    """The GPU backend is the same ONNX graph converted to torch (onnx2torch). It must give
    onnxruntime's DNSMOS to within float32 kernel noise, on real speech and on noise (on the CPU
    here; on the GPU where there is one, and auto then picks it)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert isinstance(scorer.runner, TorchDnsmos if device == "cuda" else OnnxDnsmos)
    speech = [_speech(name) for name in (CLEAN, "LJ002-0020.wav", "jfk.flac", "ES2011a.Headset-0-40s-46s.wav")]
    speech.append(np.concatenate(speech * 3))  # ~13 windows: more than one TorchDnsmos.CHUNK
    speech.append(np.random.default_rng(1).normal(0, 0.1, 5 * 16000).astype(np.float32))
    on_torch, reference = QualityScorer(QualityConfig()), QualityScorer(QualityConfig(dnsmos_device="cpu"))
    on_torch.runner = TorchDnsmos(device)
    reference.setup()
    ours, expected = np.array(on_torch.dnsmos(speech)), np.array(reference.dnsmos(speech))
    assert np.abs(ours - expected).max() < 0.02
    assert ours[-1, 2] < ours[0, 2] - 1.0  # and it still tells noise from speech


def test_asking_for_a_missing_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        QualityScorer(QualityConfig(dnsmos_device="cuda")).setup()


def test_a_segment_that_cannot_be_scored_becomes_a_quality_reject():
    config = load_job_config(str(DEMO), "/tmp/unused")
    preparer = Preparer(config)
    preparer.setup()
    unit = PreparedUnit(7, segments=[
        PreparedSegment(f"k{i}", "src", "file:///x.wav", float(i), i + 1.0, b"", {"audio_hash": str(i)})
        for i in range(2)])
    kept = preparer._score([_speech(CLEAN), np.zeros(0, dtype=np.float32)], unit)
    assert len(kept) == 1 and [s.key for s in unit.segments] == ["k0"]
    assert unit.segments[0].scores["audio_hash"] == "0" and unit.segments[0].scores["dnsmos_ovrl"] > 3
    (reject,) = unit.rejects
    assert reject["stage"] == "quality" and reject["key"] == "k1" and "empty segment" in reject["reason"]


def test_filters_name_metric_value_and_threshold():
    config = QualityConfig(min_dnsmos_ovrl=2.5)
    failed = verdict(config, {"dnsmos_ovrl": 2.3141, "snr_db": 3.0})  # first failing metric in a fixed order
    assert (failed.metric, failed.threshold, failed.reason) == ("dnsmos_ovrl", 2.5, "dnsmos_ovrl 2.31 < 2.50")
    assert failed.value == pytest.approx(2.3141, rel=1e-6)
    assert verdict(config, {"dnsmos_ovrl": 2.6, "loudness_lufs": None}) is None  # unmeasured passes
    assert verdict(QualityConfig(languages=["de"]), {"language": "en"}).reason == "language en not in [de]"
    assert chars_per_second("In 1813, sir!", 2.0) == pytest.approx(4.5)  # 9 letters and digits


def test_no_speech_needs_a_high_probability_and_unsure_words_as_in_whisper():
    """Whisper calls a decode silent only when no_speech_prob > 0.6 AND avg_logprob < -1 (issue 16:
    the probability alone dropped half of a clear-speech corpus)."""
    config = QualityConfig()
    assert (config.max_no_speech_prob, config.min_avg_logprob) == (0.6, -1.0)
    assert verdict(config, {"no_speech_prob": 0.81, "avg_logprob": -0.3}) is None  # confident words: speech
    failed = verdict(config, {"no_speech_prob": 0.81, "avg_logprob": -1.3})
    assert (failed.metric, failed.threshold) == ("no_speech_prob", 0.6)
    assert failed.value == pytest.approx(0.81, rel=1e-6)
    assert failed.reason == "no speech: no_speech_prob 0.81 > 0.6 and avg_logprob -1.30 < -1.00"
    # unsure words with a low no-speech probability: the avg_logprob floor's reject, not "no speech"
    assert verdict(config, {"no_speech_prob": 0.2, "avg_logprob": -1.3}).reason == "avg_logprob -1.30 < -1.00"
    # a segment that shared a packed window has no no_speech_prob of its own: its words decide
    assert verdict(config, {"no_speech_prob": None, "avg_logprob": -0.3}) is None
    assert verdict(config, {"no_speech_prob": None, "avg_logprob": -1.3}).metric == "avg_logprob"
    # as Whisper without a log-prob threshold: the probability alone; and the rule can be off
    alone = verdict(QualityConfig(min_avg_logprob=None), {"no_speech_prob": 0.81, "avg_logprob": -0.3})
    assert alone.reason == "no speech: no_speech_prob 0.81 > 0.6"
    assert verdict(QualityConfig(max_no_speech_prob=None), {"no_speech_prob": 0.99, "avg_logprob": -1.3}).metric \
        == "avg_logprob"


ESPEAK = [("en-us", "Please call Stella and ask her to bring these things with her from the store."),
          ("en-gb", "We will meet at the station at half past nine tomorrow morning."),
          ("en-us+f2", "Nobody knew where the old map had come from."),
          ("en-gb-x-rp", "The museum opens a new exhibition next month.")]


@pytest.mark.slow  # the real model: what it hears in packed windows
def test_clear_speech_sharing_a_window_is_kept_and_has_no_borrowed_no_speech_prob(tmp_path):
    """Short real clips and espeak-ng sentences share ASR windows. The default filters keep every
    segment, and no packed segment carries its window's no_speech_prob (a number about the whole
    window): only segments decoded alone have one."""
    for name in ("LJ002-0020.wav", "LJ002-0035.wav", "common_voice_en_651325.mp3",
                 "ES2011a.Headset-0-40s-46s.wav", "jfk.flac"):
        shutil.copy(DEMO / name, tmp_path / name)
    for i, (voice, text) in enumerate(ESPEAK):
        subprocess.run(["espeak-ng", "-w", str(tmp_path / f"espeak-{i}.wav"), "-v", voice, text], check=True)
    config = load_job_config(str(tmp_path), str(tmp_path / "out"))
    preparer = Preparer(config)
    preparer.setup()
    audios, prepared = preparer(0, [SourceFile(p.stem, str(p)) for p in sorted(tmp_path.iterdir())])
    transcriber = Transcriber(config.asr)
    transcriber.setup()
    results = transcriber(audios)
    rows, rejects = UnitCommitter(config)._rows(prepared, results)
    assert not rejects and len(rows) == len(audios) >= 10  # jfk and the AMI clip give several segments
    packed, alone = transcriber.counts["packed"], transcriber.counts["alone"]
    assert packed >= 8 and transcriber.counts["windows"] <= len(rows) // 2  # most share a window
    assert sum(row["no_speech_prob"] is None for row, _ in rows) == packed
    assert sum(row["no_speech_prob"] is not None for row, _ in rows) == alone
    assert all(0 <= row["no_speech_prob"] < 0.6 for row, _ in rows if row["no_speech_prob"] is not None)
    spoken = " ".join(normalise_text(row["text"]) for row, _ in rows)
    assert "every purchase is a vote" in spoken and "museum opens a new exhibition" in spoken


def test_plan_prices_quality_as_part_of_prep(tmp_path):
    hardware = HardwareProfile(
        name="cpu", cpu_model="test", cpus=4, asr_model="tiny.en", compute_type="int8", device="cpu",
        batch_size=16, prep_seconds_per_input_second=0.03, quality_seconds_per_input_second=0.02,
        asr_seconds_per_segment=0.5, write_seconds_per_unit=1.0, ray_start_seconds=1.0,
        model_load_seconds=1.0, measured_on_seconds=60.0, measured_at="2026-01-01")
    data = DataProfile(speech_fraction=0.5, segments_per_speech_second=0.25, kept_fraction=1.0,
                       output_bytes_per_output_second=30000.0, sample_seconds=60.0, sample_files=3)
    size = size_from_manifest(pa.Table.from_pylist(
        [{"id": "a", "uri": "/a.flac", "bytes": 1, "duration": 36000.0}], schema=MANIFEST_SCHEMA))
    prep = {}
    for enabled in (True, False):
        config = load_job_config("/in", "/out", overrides={"quality.enabled": enabled})
        plan = predict(config, size, hardware, data, resources_for(4, 0, config.engine))
        prep[enabled] = next(s.seconds for s in plan.stages if s.name == "prep")
    assert prep[True] == pytest.approx(36000 * 0.03 / 3)  # 3 prep workers beside the ASR actor
    assert prep[False] == pytest.approx(36000 * 0.01 / 3)

    # a profile that knows a DNSMOS window's cost prices this input's windows, not the sample's seconds
    per_window = hardware.model_copy(update={"dnsmos_seconds_per_window": 0.4})
    few_windows = data.model_copy(update={"dnsmos_windows_per_input_second": 0.1})
    config = load_job_config("/in", "/out")
    plan = predict(config, size, per_window, few_windows, resources_for(4, 0, config.engine))
    assert next(s.seconds for s in plan.stages if s.name == "prep") == pytest.approx(36000 * (0.01 + 0.4 * 0.1) / 3)


@pytest.fixture(scope="module")
def quality_job(clips, local_ray, tmp_path_factory):
    """The real clips plus a byte copy of a LibriSpeech file, in one unit, with a DNSMOS threshold
    that keeps the LibriSpeech clips only."""
    folder = tmp_path_factory.mktemp("quality") / "in"
    shutil.copytree(clips, folder)
    shutil.copy(folder / CLEAN, folder / f"copy-{CLEAN}")
    output = tmp_path_factory.mktemp("quality") / "out"
    config = small_units_config(str(folder), str(output), **{
        "engine.unit_minutes": 30, "quality.min_dnsmos_ovrl": THRESHOLD})
    summary = run_job(config)
    index = ds.dataset(f"{output}/index", format="parquet").to_table().to_pylist()
    rejects = ds.dataset(f"{output}/rejects", format="parquet").to_table().to_pylist()
    return folder, config, summary, index, rejects


def test_dropped_segments_are_rejects_with_metric_value_and_threshold(quality_job):
    folder, _, _, index, rejects = quality_job
    dropped = [r for r in rejects if r["stage"] == "quality" and r["metric"] == "dnsmos_ovrl"]
    assert {Path(r["source_uri"]).name for r in dropped} >= {"LJ002-0020.wav", "LJ002-0035.wav", "jfk.flac"}
    for row in dropped:
        assert row["threshold"] == THRESHOLD and row["value"] < THRESHOLD and row["key"]
        assert row["reason"] == f"dnsmos_ovrl {row['value']:.2f} < {THRESHOLD:.2f}"
    kept = {Path(r["source_uri"]).name for r in index}
    assert kept == {CLEAN, "2412-153948-0001.flac", "libri-1088-134315-0000.wav"}
    assert all(r["dnsmos_ovrl"] >= THRESHOLD for r in index)
    reasons = quality_job[2]["reject_reasons"]  # counted by metric and threshold, not by each value
    assert reasons[f"quality: dnsmos_ovrl < {THRESHOLD:g}"] == len(dropped) and reasons["quality: exact duplicate"] == 1
    inputs = {str(p) for p in folder.iterdir() if p.suffix not in {".md", ".jsonl"}}
    assert {r["source_uri"] for r in index} | {r["source_uri"] for r in rejects} == inputs


def test_exact_copy_is_rejected_naming_the_kept_key(quality_job):
    _, _, _, index, rejects = quality_job
    (original,) = [r for r in index if Path(r["source_uri"]).name == CLEAN]
    (copy,) = [r for r in rejects if Path(r["source_uri"]).name == f"copy-{CLEAN}"]
    assert copy["stage"] == "quality" and copy["metric"] == "audio_hash"
    assert copy["reason"] == f"exact duplicate of {original['key']}"
    assert (copy["start"], copy["end"]) == (original["start"], original["end"])


def test_scores_are_in_the_index_and_in_each_samples_json(quality_job):
    _, config, summary, index, _ = quality_job
    urls = sorted(str(p) for p in Path(config.output, "shards").glob("shard-*.tar"))
    samples = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert set(samples) == {r["key"] for r in index}
    for row in index:
        assert all(row[name] is not None for name in SCORE_COLUMNS), row
        assert row["near_duplicate_of"] is None and 0 <= row["clipping"] < 0.001
        meta = json.loads(samples[row["key"]]["json"])
        assert {name: meta[name] for name in (*SCORE_COLUMNS, "near_duplicate_of")} == \
            {name: row[name] for name in (*SCORE_COLUMNS, "near_duplicate_of")}
        assert audio_hash(samples[row["key"]]["flac"]) == row["audio_hash"]
    assert summary["stage_seconds"]["quality"] > 0
    prep_stages = set(summary["stage_seconds"]) - {"discover", "asr", "write"}
    assert prep_stages <= set(PREP_STAGES)  # every second a prep task spends is priced by the plan


@pytest.mark.slow  # the real model: the same words from both takes
def test_a_second_take_is_flagged_as_near_duplicate_and_kept(tmp_path):
    """The same LibriSpeech utterance at 98% gain: other bytes (no exact duplicate), same words and
    length, so the second sample names the first in `near_duplicate_of`."""
    audio, rate = sf.read(DEMO / CLEAN, dtype="float32")
    sf.write(tmp_path / "a.wav", audio, rate, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", 0.98 * audio, rate, subtype="FLOAT")
    config = load_job_config(str(tmp_path), str(tmp_path / "out"))
    preparer = Preparer(config)
    preparer.setup()
    files = [SourceFile(name, str(tmp_path / f"{name}.wav")) for name in ("a", "b")]
    audios, prepared = preparer(0, files)
    transcriber = Transcriber(config.asr)
    transcriber.setup()
    rows, rejects = UnitCommitter(config)._rows(prepared, transcriber(audios))
    assert not rejects and len(rows) == 2
    (first, _), (second, _) = rows
    assert first["audio_hash"] != second["audio_hash"] and first["text"] == second["text"]
    assert first["near_duplicate_of"] is None and second["near_duplicate_of"] == first["key"]


def test_quality_off_scores_and_filters_nothing(tmp_path):
    config = load_job_config(str(DEMO), str(tmp_path / "out"), overrides={"quality.enabled": False})
    preparer = Preparer(config)
    preparer.setup()
    _, prepared = preparer(0, [SourceFile("jfk", str(DEMO / "jfk.flac"))])
    assert prepared.segments and all(s.scores == {} for s in prepared.segments)
    assert "quality" not in prepared.stage_seconds
    row = UnitCommitter(config)._index_row(0, prepared.segments[0], AsrResult("And so", "en", 1.0, {"avg_logprob": -5.0, "no_speech_prob": 0.9}))
    assert all(row[name] is None for name in (*SCORE_COLUMNS, "near_duplicate_of"))
    assert UnitCommitter(config)._drop(row, {}) is None  # avg_logprob -5 would fail the default filter
