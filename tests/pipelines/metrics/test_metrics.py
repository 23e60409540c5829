"""The metric registry (schemas/metrics.py): the real one reproduces the index columns, config
thresholds, filter order and report rows voxmill had before it existed; and adding a metric is one
declaration plus one compute function, which the index schema, the config, the scorer, the filters,
the commit and the report all pick up. No model runs here: DNSMOS is a stub."""
from __future__ import annotations

import json
import pickle
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from pipelines import report
from pipelines.metrics import cost
from pipelines.metrics.filters import RULES, verdict
from pipelines.metrics.scorer import ACOUSTIC, SCORE_NAMES, QualityScorer, per_segment
from pipelines.metrics.text import TEXT
from pipelines.records import AsrResult, PreparedSegment, PreparedUnit
from pipelines.stages import commit
from schemas.config import QualityConfig, load_job_config, quality_config_model
from schemas.metrics import METRICS, Metric, Registry, Threshold
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA, WORD_TYPE, index_schema, rejects_schema

F32, F64, I32, STR = pa.float32(), pa.float64(), pa.int32(), pa.string()
# INDEX_SCHEMA as written by hand before the registry: outputs must keep these columns, in this order
INDEX_BEFORE = [
    ("key", STR, False), ("shard", STR, False), ("unit", I32, True), ("source_id", STR, True),
    ("source_uri", STR, True), ("start", F64, True), ("end", F64, True), ("duration", F64, True),
    ("sample_rate", I32, True), ("text", STR, True), ("language", STR, True), ("language_prob", F32, True),
    ("avg_logprob", F32, True), ("no_speech_prob", F32, True), ("dnsmos_sig", F32, True),
    ("dnsmos_bak", F32, True), ("dnsmos_ovrl", F32, True), ("snr_db", F32, True), ("clipping", F32, True),
    ("loudness_lufs", F32, True), ("chars_per_second", F32, True), ("audio_hash", STR, True),
    ("near_duplicate_of", STR, True),
]
# added later (issues 17, 20), after those: error rates against a reference transcript, the speaker columns,
# the reference, the words
INDEX_ADDED = [("wer", F32, True), ("cer", F32, True), ("speaker", STR, True), ("speaker_purity", F32, True),
               ("speaker_embedding", pa.list_(pa.float16()), True), ("reference", STR, True),
               ("words", pa.list_(WORD_TYPE), True)]
# (config field, default, ge, le) in the order QualityConfig declared them
THRESHOLDS_BEFORE = [
    ("min_dnsmos_ovrl", 2.0, 1, 5), ("min_dnsmos_sig", None, 1, 5), ("min_dnsmos_bak", None, 1, 5),
    ("min_snr_db", 15.0, None, None), ("max_clipping", 0.001, 0, 1), ("min_loudness_lufs", -45.0, None, None),
    ("max_loudness_lufs", -5.0, None, None), ("min_chars_per_second", 2.0, 0, None),
    ("max_chars_per_second", 30.0, 0, None), ("min_avg_logprob", -1.0, None, 0),
    ("max_no_speech_prob", 0.6, 0, 1), ("min_language_prob", None, 0, 1), ("max_wer", None, 0, None),
    ("max_cer", None, 0, None), ("min_speaker_purity", None, 0, 1),
]
CHECKS_BEFORE = ["dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "snr_db", "clipping", "loudness_lufs",
                 "chars_per_second", "no_speech_prob", "avg_logprob", "language_prob", "wer", "cer", "speaker_purity"]
LABELS_BEFORE = {
    "dnsmos_ovrl": "DNSMOS overall", "dnsmos_sig": "DNSMOS signal", "dnsmos_bak": "DNSMOS background",
    "snr_db": "SNR (dB)", "clipping": "clipping (fraction)", "loudness_lufs": "loudness (LUFS)",
    "chars_per_second": "characters per second", "avg_logprob": "ASR avg log-prob",
    "no_speech_prob": "ASR no-speech prob", "wer": "WER vs reference", "cer": "CER vs reference",
    "speaker_purity": "speaker purity",
}


def _bounds(model: type, field: str) -> tuple:
    meta = {type(m).__name__: m for m in model.model_fields[field].metadata}
    return (getattr(meta.get("Ge"), "ge", None), getattr(meta.get("Le"), "le", None))


# ---- the real registry reproduces what was written by hand ----

def test_the_registry_reproduces_the_index_schema():
    assert [(f.name, f.type, f.nullable) for f in INDEX_SCHEMA] == INDEX_BEFORE + INDEX_ADDED
    assert index_schema(METRICS).equals(INDEX_SCHEMA, check_metadata=True)
    scores = [f for f in REJECTS_SCHEMA if f.name in METRICS]
    assert [(f.name, f.type) for f in scores] == [(m.name, m.type) for m in METRICS]
    assert all(f.nullable for f in scores)
    tail = [n for n, _, _ in INDEX_BEFORE + INDEX_ADDED][8:]  # sample_rate on: the rejects row's own columns first
    assert REJECTS_SCHEMA.names[-len(tail):] == tail and REJECTS_SCHEMA.names[-len(tail) - 1] == "shard"


def test_quality_config_thresholds_come_from_the_declarations():
    fields = list(QualityConfig.model_fields)
    assert fields == ["enabled", "dnsmos_windows", "dnsmos_device", "dnsmos_hop_seconds", "drop_exact_duplicates",
                      *(name for name, *_ in THRESHOLDS_BEFORE), "languages"]
    for name, default, ge, le in THRESHOLDS_BEFORE:
        assert QualityConfig.model_fields[name].default == default, name
        assert _bounds(QualityConfig, name) == (ge, le), name
    for metric in METRICS:
        for name, threshold in metric.thresholds:
            assert QualityConfig.model_fields[name].description == threshold.description
    assert QualityConfig.__name__ == "QualityConfig" and QualityConfig.__module__ == "schemas.config"
    config = load_job_config("in", "out", overrides={"quality.min_dnsmos_ovrl": 3.0, "quality.max_clipping": None})
    assert pickle.loads(pickle.dumps(config)) == config  # Ray ships it to every worker
    with pytest.raises(ValidationError, match="min_loudness_lufs must be below quality.max_loudness_lufs"):
        QualityConfig(min_loudness_lufs=-4.0)
    with pytest.raises(ValidationError, match="min_chars_per_second must be below"):
        QualityConfig(min_chars_per_second=40)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        QualityConfig(min_bogus=1)


def test_filters_check_in_the_old_order_and_the_report_shows_the_old_rows():
    assert [m.name for m in METRICS.checked()] == CHECKS_BEFORE
    assert report.SCORE_LABELS == LABELS_BEFORE and list(report.SCORE_LABELS) == list(LABELS_BEFORE)
    row = {"dnsmos_ovrl": 1.5, "snr_db": 3.0, "no_speech_prob": 0.9, "avg_logprob": -2.0}
    assert verdict(QualityConfig(), row).metric == "dnsmos_ovrl"  # the first in check order names it
    assert verdict(QualityConfig(), {"no_speech_prob": 0.9, "avg_logprob": -2.0}).reason.startswith("no speech")


def test_every_metric_has_its_computation():
    # stages.prepare hashes the stored bytes and sets the speaker columns (stages.speakers)
    assert set(m.name for m in METRICS.at("prep")) - set(ACOUSTIC) == {"audio_hash", "speaker", "speaker_purity",
                                                                       "speaker_embedding"}
    assert set(m.name for m in METRICS.at("commit")) - set(TEXT) == {"near_duplicate_of"}  # commit.decide flags
    assert set(ACOUSTIC) <= set(m.name for m in METRICS.at("prep"))
    assert set(TEXT) <= set(m.name for m in METRICS.at("commit"))
    assert set(RULES) <= set(m.name for m in METRICS.checked())
    assert SCORE_NAMES == ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "snr_db", "clipping", "loudness_lufs")
    assert {m.cost for m in METRICS if m.cost} <= set(cost.COSTS)
    assert cost.priced(QualityConfig(), cost.DNSMOS_COST) is cost.COSTS[cost.DNSMOS_COST]
    assert cost.priced(QualityConfig(enabled=False), cost.DNSMOS_COST) is None


def test_a_registry_refuses_a_metric_declared_twice_or_an_unknown_order():
    with pytest.raises(ValueError, match="declared twice"):
        METRICS.with_metric(Metric("snr_db", F32, "prep"))
    with pytest.raises(ValueError, match="undeclared"):
        Registry(METRICS.metrics, check_order=("nope",))


# ---- a new metric: one declaration, one compute function ----

TOY = Metric("toy_level", F32, "prep", "mean absolute sample",
             minimum=Threshold(0.05, "the toy's floor", ge=0, le=1), label="toy level", digits=2)
TOY_REGISTRY = METRICS.with_metric(TOY, before="audio_hash")
TOY_COMPUTE = {**ACOUSTIC, "toy_level": per_segment(lambda audio: float(np.abs(audio).mean()))}
ToyConfig = quality_config_model(TOY_REGISTRY)


def test_a_new_metric_is_an_index_and_rejects_column():
    schema = index_schema(TOY_REGISTRY)
    at = INDEX_SCHEMA.names.index("audio_hash")
    assert schema.names == INDEX_SCHEMA.names[:at] + ["toy_level"] + INDEX_SCHEMA.names[at:]
    assert schema.field("toy_level").type == F32
    assert rejects_schema(schema).field("toy_level").nullable


def test_a_new_metric_brings_its_thresholds_into_the_config():
    assert ToyConfig.metrics is TOY_REGISTRY and QualityConfig.metrics is METRICS
    assert "metrics" not in ToyConfig().model_dump()
    field = ToyConfig.model_fields["min_toy_level"]
    assert field.default == 0.05 and field.description == "the toy's floor"
    assert _bounds(ToyConfig, "min_toy_level") == (0, 1)
    assert list(ToyConfig.model_fields)[-2:] == ["min_toy_level", "languages"]  # after the declared order
    assert ToyConfig.model_validate(yaml.safe_load("min_toy_level: 0.2\nmax_clipping: null")).min_toy_level == 0.2
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ToyConfig(min_toy_level=2)
    assert "min_toy_level" not in QualityConfig.model_fields  # the real config is untouched


def test_a_new_metric_is_scored_and_filtered_after_the_declared_checks():
    scorer = QualityScorer(ToyConfig(), TOY_REGISTRY, TOY_COMPUTE)
    scorer.runner = lambda windows: np.full((len(windows), 3), 3.0)  # DNSMOS stub: no model
    quiet = np.full(16000, 0.01, dtype=np.float32)
    scores = scorer.score([quiet, quiet * 20])
    assert list(scores[0]) == [*SCORE_NAMES, "toy_level"] and [s["toy_level"] for s in scores] == [0.01, 0.2]

    config = ToyConfig(min_dnsmos_ovrl=None)
    failed = verdict(config, {"toy_level": 0.01}, TOY_REGISTRY)
    assert (failed.metric, failed.threshold, failed.reason) == ("toy_level", 0.05, "toy_level 0.01 < 0.05")
    assert verdict(config, {"toy_level": 0.2}, TOY_REGISTRY) is None
    assert verdict(config, {"toy_level": 0.01, "snr_db": 3.0}, TOY_REGISTRY).metric == "snr_db"
    assert verdict(ToyConfig(min_toy_level=None), {"toy_level": 0.01}, TOY_REGISTRY) is None


def test_a_new_metric_reaches_the_index_the_samples_json_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(commit, "INDEX_SCHEMA", index_schema(TOY_REGISTRY))
    monkeypatch.setattr(commit, "REJECTS_SCHEMA", rejects_schema(index_schema(TOY_REGISTRY)))
    config = load_job_config(str(tmp_path), str(tmp_path / "out"))
    config = config.model_copy(update={"quality": ToyConfig(min_dnsmos_ovrl=None)})
    scores = {"dnsmos_sig": 3.0, "dnsmos_bak": 3.0, "dnsmos_ovrl": 3.0, "snr_db": 30.0, "clipping": 0.0,
              "loudness_lufs": -20.0}
    segments = [PreparedSegment(f"src_{i:03d}", "src", "file:///src.wav", float(i), i + 2.0, f"audio{i}".encode(),
                                {**scores, "toy_level": level, "audio_hash": f"h{i}"})
                for i, level in enumerate((0.2, 0.01, 0.3))]
    results = [AsrResult("hello there world", "en", 0.99, {"avg_logprob": -0.2, "no_speech_prob": 0.01})] * 3
    commit.UnitCommitter(config)(PreparedUnit(0, segments), results, "digest")

    index = pq.read_table(tmp_path / "out" / "index" / "part-000000.parquet")
    assert index.schema.names == index_schema(TOY_REGISTRY).names
    assert index["toy_level"].to_pylist() == [pytest.approx(0.2), pytest.approx(0.3)]
    rejects = pq.read_table(tmp_path / "out" / "rejects" / "part-000000.parquet").to_pylist()
    assert [(r["key"], r["metric"], r["reason"]) for r in rejects] == [
        ("src_001", "toy_level", "toy_level 0.01 < 0.05")]
    with tarfile.open(next((tmp_path / "out" / "shards").glob("*.tar"))) as tar:
        meta = json.loads(tar.extractfile("src_000.json").read())
    names = list(meta)
    assert names[names.index("chars_per_second"):][:4] == ["chars_per_second", "toy_level", "audio_hash",
                                                           "near_duplicate_of"]

    summary = report.gather(str(tmp_path / "out"), samples=0, registry=TOY_REGISTRY)
    assert summary.scores["toy_level"].count == 2
    rows = {label: d for label, d, _ in report.distribution_rows(summary, TOY_REGISTRY)}
    assert rows["toy level"].max == pytest.approx(0.3)
    assert list(rows)[-1] == "toy level"  # after the declared display order
