"""Rejects keep their text, scores and audio; `voxmill refilter` re-applies thresholds without ASR.

Outputs here are real: the unit's files are prepared once (decode, VAD, DNSMOS) and committed by
the real `UnitCommitter` under each config, with a fake ASR that is a pure function of the audio,
so "a fresh run with those thresholds" is the same prep plus a commit under them. A refilter's
output is compared with that, member by member and row by row.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pipelines import refilter as refiltering
from pipelines import report
from pipelines.io import storage
from pipelines.loader import IndexedShards, SpeechShards
from pipelines.records import AsrResult
from pipelines.stages.commit import UnitCommitter
from pipelines.stages.discover import Discover
from pipelines.stages.prepare import Preparer
from pipelines.state import jobstate
from pipelines.state.compaction import compact_output
from pipelines.state.lease import OutputLease
from pipelines.state.ledger import Ledger
from schemas.config import load_job_config
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA
from tests.conftest import DEMO

UNIT_MINUTES = 0.6  # a, b-copy, b (11 s each) in unit 0; c, e-tone, f in unit 1
BASE = {"quality.min_loudness_lufs": -27.4}  # between a (-27.48 LUFS, 0.98x gain) and b (-27.30): drops a


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The input folder and each unit prepared once: (unit, ASR input audio, PreparedUnit)."""
    src = tmp_path_factory.mktemp("refilter") / "in"
    src.mkdir()
    audio, rate = sf.read(DEMO / "2412-153948-0000.flac", dtype="float32")
    sf.write(src / "a.wav", 0.98 * audio, rate, subtype="FLOAT")  # same words and length: a near duplicate
    sf.write(src / "b.wav", audio, rate, subtype="FLOAT")
    shutil.copy(src / "b.wav", src / "b-copy.wav")  # byte-identical audio: an exact duplicate in the unit
    meeting, rate = sf.read(DEMO / "ES2011a.Headset-0-40s-46s.wav", dtype="float32")
    sf.write(src / "c.wav", 2 * meeting, rate, subtype="FLOAT")  # +6 dB: passes the loudness floor below
    shutil.copy(DEMO / "stereo.opus", src / "e-tone.opus")  # a file-level reject (vad: no speech found)
    shutil.copy(DEMO / "LJ002-0035.wav", src / "f.wav")  # the fake ASR hears nothing: an asr reject
    config = _config(src, src.parent / "unused")
    manifest = Discover(config.discover)(config.input)
    preparer = Preparer(config)
    preparer.setup()
    units = jobstate.claim(config, manifest)
    return src, manifest, [(u, *preparer(u.index, u.files)) for u in units]


def _config(src: Path, out: Path, keep_audio: bool = True, **quality):
    overrides = {"engine.unit_minutes": UNIT_MINUTES, "shards.keep_rejected_audio": keep_audio, **BASE,
                 **{f"quality.{k}": v for k, v in quality.items()}}
    return load_job_config(str(src), str(out), overrides=overrides)


def fake_asr(audio: np.ndarray) -> AsrResult:
    """A transcript that depends on the audio only: two words a second (none under 2 s), and
    scores with all of float64's digits (the index stores float32, KEY.json the run's own)."""
    seconds = len(audio) / 16000
    text = "" if seconds < 2 else " ".join(["hello"] * round(seconds * 2))
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return AsrResult(text, "en", 1.0, {"avg_logprob": -0.1 - rms, "no_speech_prob": 0.01 + rms / 7})


def run(prepared, out: Path, keep_audio: bool = True, **quality) -> Path:
    """A job committed as `run_job` would (claim, then per unit data and ledger record)."""
    src, manifest, units = prepared
    config = _config(src, out, keep_audio, **quality)
    jobstate.claim(config, manifest)
    committer = UnitCommitter(config)
    for unit, audios, prep in units:
        committer(prep, [fake_asr(a) for a in audios], unit.digest)
    return out


def contents(out: Path) -> dict:
    """What an output holds: every shard's members (bytes) and every table's rows, by file name."""
    found: dict = {}
    for folder in ("shards", "rejected"):
        for tar_path in sorted((out / folder).glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                found[f"{folder}/{tar_path.name}"] = [(m.name, tar.extractfile(m).read()) for m in tar]
    for folder in ("index", "rejects"):
        for part in sorted((out / folder).glob("*.parquet")):
            found[f"{folder}/{part.name}"] = pq.read_table(part).to_pylist()
    return found


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def rows(out: Path, folder: str) -> list[dict]:
    return [r for part in sorted((out / folder).glob("*.parquet")) for r in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def base(prepared, tmp_path_factory) -> Path:
    return run(prepared, tmp_path_factory.mktemp("base") / "out")


def test_rejects_keep_text_scores_and_audio_apart_from_the_training_shards(base):
    rejects = {r["key"]: r for r in rows(base, "rejects")}
    by_reason = {(r["stage"], r["metric"] or r["reason"]): r for r in rejects.values()}
    assert set(by_reason) == {("quality", "loudness_lufs"), ("quality", "audio_hash"), ("asr", "empty transcript"),
                              ("vad", "no speech found")}
    loud = by_reason["quality", "loudness_lufs"]
    assert loud["key"].startswith("a-") and loud["text"].startswith("hello") and loud["threshold"] == -27.4
    assert loud["value"] == pytest.approx(-27.477, abs=1e-3) and loud["dnsmos_ovrl"] > 3 and loud["snr_db"] > 30
    assert loud["avg_logprob"] < 0 and loud["chars_per_second"] > 0 and loud["audio_hash"] and loud["language"] == "en"
    assert by_reason["quality", "audio_hash"]["reason"].startswith("exact duplicate of b-copy-")
    assert by_reason["asr", "empty transcript"]["text"] == "" and by_reason["asr", "empty transcript"]["dnsmos_ovrl"]
    file_level = by_reason["vad", "no speech found"]
    assert file_level["key"] is None and file_level["shard"] is None
    assert all(file_level[c] is None for c in ("text", "dnsmos_ovrl", "audio_hash", "sample_rate"))
    assert pq.read_schema(next((base / "rejects").glob("*.parquet"))).names == REJECTS_SCHEMA.names

    training = {name for tar in (base / "shards").glob("*.tar") for name in members(tar)}
    for key, row in rejects.items():
        if key is None:
            continue
        assert row["shard"].startswith("rejected/shard-") and not any(n.startswith(key) for n in training)
        stored = members(base / row["shard"])
        audio, rate = sf.read(io.BytesIO(stored[f"{key}.flac"]))
        assert rate == row["sample_rate"] == 24000 and len(audio) == round(row["duration"] * rate)
        meta = json.loads(stored[f"{key}.json"])
        assert meta["text"] == row["text"] and meta["reason"] == row["reason"] and meta["stage"] == row["stage"]
    index_keys = {r["key"] for r in rows(base, "index")}
    assert {name.split(".")[0] for name in training} == index_keys and not index_keys & set(rejects)
    assert SpeechShards(str(base), shuffle=0).num_samples == len(index_keys)
    assert {u["key"] for u in SpeechShards(str(base), shuffle=0)} == index_keys  # never a reject shard
    heard = IndexedShards(str(base), rejected=True)
    assert set(heard.shard_of) == {k for k in rejects if k} and not set(heard.shard_of) & index_keys
    assert heard[loud["key"]]["waveform"].numel() == round(loud["duration"] * 24000)
    record = Ledger(str(base)).done()[0]
    assert record["rejected_shards"] == ["rejected/shard-000000.tar"] and record["rejects"] == 2


def test_without_reject_audio_rows_stay_and_loosening_is_refused(prepared, tmp_path):
    out = run(prepared, tmp_path / "out", keep_audio=False)
    assert not (out / "rejected").exists()
    dropped = [r for r in rows(out, "rejects") if r["key"]]
    assert dropped and all(r["shard"] is None and r["text"] is not None for r in dropped)
    with pytest.raises(refiltering.RefilterError, match="keep_rejected_audio: false"):
        refiltering.refilter(str(out), {"min_loudness_lufs": -45.0})
    assert not (out / "v2").exists()  # refused before writing anything
    stricter = refiltering.refilter(str(out), {"min_dnsmos_ovrl": 3.2})  # tightening needs no reject audio
    assert stricter["refilter"]["dropped"] == 1 and not (out / "v2" / "rejected").exists()


def test_looser_threshold_brings_a_reject_back_with_its_exact_audio(prepared, base, tmp_path):
    before = members(base / "rejected/shard-000000.tar")
    summary = refiltering.refilter(str(base), {"min_loudness_lufs": -45.0})
    new = base / "v2"
    assert summary["config"]["output"] == str(new) and summary["complete"]
    assert summary["refilter"]["restored"] == 1 and summary["refilter"]["dropped"] == 0
    fresh = run(prepared, tmp_path / "fresh", min_loudness_lufs=-45.0)
    assert contents(new) == contents(fresh)  # what a run with that threshold writes, byte for byte

    index = {r["key"]: r for r in rows(new, "index")}
    restored = next(k for k in index if k.startswith("a-"))
    assert restored not in {r["key"] for r in rows(new, "rejects")}
    assert members(new / index[restored]["shard"])[f"{restored}.flac"] == before[f"{restored}.flac"]
    copy = next(k for k in index if k.startswith("b-copy-"))
    assert index[copy]["near_duplicate_of"] == restored  # decided again in segment order

    job = jobstate.read(str(new))
    config = _config(prepared[0], new, min_loudness_lufs=-45.0)
    assert job["fingerprint"] == jobstate.fingerprint(jobstate.output_settings(config))
    units = jobstate.claim(config, prepared[1])  # `voxmill run` with those settings accepts it ...
    done = Ledger(str(new)).done()
    assert all(Ledger(str(new)).lookup(done, u.index, u.digest) for u in units)  # ... and finds every unit done
    found = report.gather(str(new))
    assert found.samples == len(index) and found.rejects == len(rows(new, "rejects")) and found.units == 2


def test_stricter_threshold_moves_a_sample_to_rejects(prepared, base, tmp_path):
    out = tmp_path / "strict"
    summary = refiltering.refilter(str(base), {"min_dnsmos_ovrl": 3.2}, str(out))
    assert summary["refilter"]["dropped"] == 1 and summary["refilter"]["restored"] == 0
    assert contents(out) == contents(run(prepared, tmp_path / "fresh", min_dnsmos_ovrl=3.2))
    moved = next(r for r in rows(out, "rejects") if r["metric"] == "dnsmos_ovrl")
    assert moved["key"].startswith("c-") and moved["key"] in {r["key"] for r in rows(base, "index")}
    assert members(out / moved["shard"])[f"{moved['key']}.flac"] == \
        members(base / "shards/shard-000001.tar")[f"{moved['key']}.flac"]
    assert report.gather(str(out)).samples == len(rows(out, "index"))

    again = refiltering.refilter(str(base), {"min_dnsmos_ovrl": 3.2}, str(out))  # a rerun: nothing to do
    assert again["refilter"]["units_refiltered"] == 0 and again["refilter"]["units_resumed"] == 2
    assert contents(out) == contents(tmp_path / "fresh")


def test_a_compacted_source_refilters_as_its_parts_do(base, tmp_path):
    compacted = tmp_path / "compacted"
    shutil.copytree(base, compacted)
    compact_output(str(compacted))
    assert not list((compacted / "index").glob("part-*"))
    summary = refiltering.refilter(str(compacted), {"min_dnsmos_ovrl": 3.2}, str(tmp_path / "from-compacted"))
    assert summary["refilter"]["dropped"] == 1
    refiltering.refilter(str(base), {"min_dnsmos_ovrl": 3.2}, str(tmp_path / "from-parts"))
    assert contents(tmp_path / "from-compacted") == contents(tmp_path / "from-parts")


def test_an_interrupted_refilter_resumes_to_the_same_output(prepared, base, tmp_path, monkeypatch):
    out, fresh = tmp_path / "new", run(prepared, tmp_path / "fresh", min_loudness_lufs=-45.0, min_dnsmos_ovrl=3.2)
    real = refiltering.refilter_unit

    def killed_at_unit_1(src, committer, quality, unit, record):
        if unit.index == 1:
            raise KeyboardInterrupt
        return real(src, committer, quality, unit, record)

    monkeypatch.setattr(refiltering, "refilter_unit", killed_at_unit_1)
    changes = refiltering.parse_settings(["quality.min_loudness_lufs=-45", "quality.min_dnsmos_ovrl=3.2"])
    with pytest.raises(KeyboardInterrupt):
        refiltering.refilter(str(base), changes, str(out))
    assert set(Ledger(str(out)).done()) == {0}
    monkeypatch.setattr(refiltering, "refilter_unit", real)
    assert refiltering.refilter(str(base), changes, str(out))["refilter"]["units_refiltered"] == 1
    assert contents(out) == contents(fresh)

    (out / "_ledger/unit-000000.json").unlink()  # a unit whose record never landed: redone over the same names
    (out / "shards/shard-000000.tar").write_bytes(b"half a tar")
    assert refiltering.refilter(str(base), changes, str(out))["refilter"]["units_refiltered"] == 1
    assert contents(out) == contents(fresh)


def test_refusals_are_one_line_with_exit_2(base, tmp_path):
    cli = CliRunner()
    from flows.cli import app

    def refused(*args: str) -> str:
        result = cli.invoke(app, ["refilter", *args])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    (tmp_path / "empty").mkdir()
    assert "holds no voxmill job" in refused(str(tmp_path / "empty"), "--set", "quality.min_snr_db=20")
    assert "how segments are scored" in refused(str(base), "--set", "quality.dnsmos_windows=reference")
    assert "no such quality threshold" in refused(str(base), "--set", "quality.min_nothing=1")
    assert "quality.FIELD=VALUE" in refused(str(base), "--set", "audio.sample_rate=16000")

    old = tmp_path / "old"  # an output made before rejects kept their text and scores
    shutil.copytree(base, old, ignore=shutil.ignore_patterns("v*"))
    for part in (old / "rejects").glob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.select([n for n in table.column_names if n not in INDEX_SCHEMA.names or n in
                                     ("key", "unit", "source_id", "source_uri", "start", "end", "duration")]), part)
    assert "before rejects kept their text" in refused(str(old), "--set", "quality.min_snr_db=20")
    assert not (old / "v2").exists()

    with OutputLease(str(tmp_path / "busy")):  # another writer holds the new output
        assert "another voxmill run holds" in refused(str(base), "--set", "quality.min_snr_db=20", "-o",
                                                      str(tmp_path / "busy"))

    done = cli.invoke(app, ["refilter", str(base), "--set", "quality.min_snr_db=null", "--output",
                            str(tmp_path / "cli"), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["counts"]["samples"] == len(rows(tmp_path / "cli", "index"))
    same = cli.invoke(app, ["refilter", str(base), "--set", "quality.min_loudness_lufs=-27.4"])
    assert same.exit_code == 0 and "nothing to do" in " ".join(same.output.split())
    assert storage.exists(str(tmp_path / "cli" / "summary.json"))
