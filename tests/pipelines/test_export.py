"""`voxmill export`: Lhotse Shar read back by lhotse itself, NeMo manifests by the contract NeMo's
manifest reader uses, on a real job's output of several shards whose filters dropped segments."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from flows.cli import app
from pipelines.export import ExportError, export
from pipelines.io import tables
from pipelines.job import run_job
from pipelines.loader import IndexedShards, read_index
from tests.conftest import moto_s3, references, small_units_config

FILTER = "dnsmos_ovrl >= 3.3"


@pytest.fixture(scope="module")
def out(clips, local_ray, tmp_path_factory) -> str:
    """The clips in units of ~15 s, their references from the manifest they ship with (a column the user
    names), word timestamps stored, with a DNSMOS floor that drops some segments into rejected/."""
    output = str(tmp_path_factory.mktemp("export") / "out")
    summary = run_job(small_units_config(str(clips), output, **{
        "quality.min_dnsmos_ovrl": 3.0, "asr.word_timestamps": True,
        "discover.reference_manifest": str(clips / "references.jsonl"), "discover.reference_path_column": "file"}))
    assert summary["complete"] and summary["counts"]["shards"] >= 3
    return output


@pytest.fixture(scope="module")
def index(out) -> dict[str, dict]:
    return {row["key"]: row for row in read_index(out).to_pylist()}


@pytest.fixture(scope="module")
def rejected(out) -> set[str]:
    """The segments the filters dropped whose audio sits in rejected/: must never be exported."""
    rows = tables.read_parts(out, "rejects", ("key", "shard")).to_pylist()
    keys = {r["key"] for r in rows if r["shard"]}
    assert keys and all(r["shard"].startswith("rejected/") for r in rows if r["shard"])
    return keys


def _cuts(dest) -> list:
    from lhotse import CutSet

    return list(CutSet.from_shar(in_dir=str(dest)))


def test_lhotse_shar_reads_back_with_lhotse(out, index, rejected):
    summary = export(out, "lhotse")
    dest = Path(out) / "exports" / "lhotse"
    assert summary["samples"] == len(index) and summary["shards"] >= 3
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        f"{kind}.{n:06d}.{ext}" for n in range(summary["shards"])
        for kind, ext in (("cuts", "jsonl.gz"), ("recording", "tar")))
    cuts = _cuts(dest)
    assert {c.id for c in cuts} == set(index) and len(cuts) == len(index) and not {c.id for c in cuts} & rejected
    stored = IndexedShards(out)
    for cut in cuts:
        row = index[cut.id]
        audio = cut.load_audio()
        expected = stored[cut.id]["waveform"].numpy()
        assert audio.shape == (1, expected.size) and np.allclose(audio[0], expected, atol=1e-6)
        assert cut.sampling_rate == row["sample_rate"] and cut.duration == pytest.approx(row["duration"], abs=1e-3)
        assert cut.recording.num_samples == expected.size and cut.recording.load_audio().shape == audio.shape
        [sup] = cut.supervisions
        assert (sup.text, sup.language, sup.speaker, sup.start) == (row["text"], row["language"], row["speaker"], 0.0)
        assert sup.duration == cut.duration and sup.recording_id == cut.recording.id == cut.id
        assert sup.dnsmos_ovrl == pytest.approx(row["dnsmos_ovrl"], abs=1e-3) and sup.audio_hash == row["audio_hash"]
        assert "near_duplicate_of" in sup.custom and "language" not in sup.custom
        assert sup.reference == row["reference"] and "wer" in sup.custom
        assert [(w.symbol, w.start, round(w.end, 3)) for w in sup.alignment["word"]] == _words(row)
        assert (cut.source_uri, cut.source_start, cut.voxmill_shard) == (row["source_uri"], row["start"], row["shard"])
    # the classic manifests: RecordingSet / SupervisionSet, from the same cuts
    from lhotse import CutSet, RecordingSet, SupervisionSet

    recordings, supervisions, _ = CutSet.from_cuts(cuts).decompose()
    assert isinstance(recordings, RecordingSet) and isinstance(supervisions, SupervisionSet)
    first = cuts[0].id
    assert recordings[first].load_audio().shape[1] == recordings[first].num_samples
    assert len(supervisions) == len(index)


def test_lhotse_export_again_with_a_filter_drops_the_stale_shards(out, index, tmp_path):
    dest = tmp_path / "lhotse"
    everything = export(out, "lhotse", str(dest))
    result = CliRunner().invoke(app, ["export", out, "--to", "lhotse", "--dest", str(dest), "--filter", FILTER,
                                      "--json"])
    assert result.exit_code == 0, result.output
    filtered = json.loads(result.stdout)
    kept = {k for k, r in index.items() if r["dnsmos_ovrl"] >= 3.3}
    assert 0 < len(kept) < len(index) and filtered["samples"] == len(kept)
    assert filtered["removed_stale"] == 2 * (everything["shards"] - filtered["shards"]) > 0
    assert {c.id for c in _cuts(dest)} == kept
    assert not [p for p in dest.iterdir() if ".tmp-" in p.name]


def _nemo_lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def nemo_audio_path(audio_filepath: str, manifest: str) -> str:
    """NeMo's `get_full_path`: a relative path that is not a file from here is taken relative to the
    manifest's folder."""
    if not os.path.isabs(audio_filepath) and not os.path.isfile(audio_filepath):
        return os.path.abspath(os.path.join(os.path.dirname(manifest), audio_filepath))
    return audio_filepath


def test_nemo_manifest_meets_nemos_reader_contract(out, index, rejected, tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["export", out, "--to", "nemo"])
    assert result.exit_code == 0, result.output
    manifest = Path(out) / "exports" / "nemo" / "manifest.json"
    lines = _nemo_lines(manifest)
    assert sorted(line["key"] for line in lines) == sorted(index)
    assert not {line["key"] for line in lines} & rejected
    assert len({index[line["key"]]["shard"] for line in lines}) >= 3
    stored = IndexedShards(out)
    monkeypatch.chdir(tmp_path)  # NeMo resolves relative paths against the manifest, not the working directory
    for line in lines:
        row = index[line["key"]]
        assert list(line)[:4] == ["audio_filepath", "duration", "text", "lang"] and "offset" not in line
        assert not os.path.isabs(line["audio_filepath"])
        path = nemo_audio_path(line["audio_filepath"], str(manifest))
        assert os.path.isfile(path)
        wave, rate = sf.read(path, dtype="float32")
        assert line["duration"] == pytest.approx(len(wave) / rate, abs=1e-9)
        assert line["duration"] == pytest.approx(row["duration"], abs=1e-3)
        assert (line["text"], line["lang"], line["source_uri"]) == (row["text"], row["language"], row["source_uri"])
        assert line["dnsmos_ovrl"] == pytest.approx(row["dnsmos_ovrl"], abs=1e-3)
        assert Path(path).read_bytes() == stored.raw(line["key"])["flac"]  # the stored bytes, not re-encoded
        assert line["reference"] == row["reference"]
        assert line["wer"] == (None if row["wer"] is None else pytest.approx(row["wer"], abs=1e-3))
        assert [(w["word"], w["start"], w["end"]) for w in line["words"]] == _words(row)
    assert any(line["reference"] for line in lines) and not all(line["reference"] for line in lines)
    refs = references()  # from the manifest: a sample has a reference exactly when its file has one
    assert all((line["reference"] is None) == (refs[Path(line["source_uri"]).name]["text"] is None) for line in lines)


def _words(row: dict) -> list[tuple]:
    """The index row's words as (word, start, end) at the stored millisecond; every sample has some."""
    words = [(w["word"], round(w["start"], 3), round(w["end"], 3)) for w in row["words"]]
    assert words and " ".join(w for w, _, _ in words) == row["text"]
    assert all(0 <= start <= end <= row["duration"] + 1e-3 for _, start, end in words)
    return words


def test_hf_dataset_carries_the_reference_and_the_words(out, index, tmp_path):
    """The card declares `words` (a list of structs) and `reference`: datasets reads them from every shard."""
    from pipelines.loader import hf_dataset

    data = hf_dataset(out, decode=False, cache_dir=str(tmp_path / "hf"))
    assert sorted(data["key"]) == sorted(index)
    for row in data:
        assert row["reference"] == index[row["key"]]["reference"]
        expected = [(word, start) for word, start, _ in _words(index[row["key"]])]
        assert [(w["word"], round(w["start"], 3)) for w in row["words"]] == expected


def test_nemo_filtered_export_removes_the_audio_it_no_longer_lists(out, index, tmp_path):
    dest = tmp_path / "nemo"
    export(out, "nemo", str(dest))
    written = export(out, "nemo", str(dest), [FILTER])
    lines = _nemo_lines(dest / "manifest.json")
    assert {line["key"] for line in lines} == {k for k, r in index.items() if r["dnsmos_ovrl"] >= 3.3}
    assert written["removed_stale"] == len(index) - len(lines) > 0
    on_disk = sorted(str(p.relative_to(dest)) for p in dest.rglob("*.flac"))
    assert on_disk == sorted(line["audio_filepath"] for line in lines)


def test_export_refuses_a_foreign_dest_and_an_unknown_format(out, tmp_path):
    (tmp_path / "mine.txt").write_text("not an export")
    with pytest.raises(ExportError, match="not part of a voxmill lhotse export"):
        export(out, "lhotse", str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "not an export"
    with pytest.raises(ExportError, match="one of lhotse, nemo"):
        export(out, "kaldi", str(tmp_path / "k"))
    result = CliRunner().invoke(app, ["export", out, "--to", "nemo", "--filter", "dnsmos >= 3"])
    assert result.exit_code == 2 and "unknown column" in result.output


@pytest.fixture(scope="module")
def s3(out):
    """The output copied into a bucket on the loopback moto server the environment names (conftest)."""
    with moto_s3() as fs:
        fs.mkdir("export-corpus")
        for path in Path(out).glob("*/*"):
            if path.parent.name in ("shards", "index") or path.name == "job.json":
                fs.put_file(str(path), f"export-corpus/v1/{path.parent.name}/{path.name}")
        yield fs


def test_exports_from_and_to_s3(s3, index, tmp_path):
    written = export("s3://export-corpus/v1", "nemo")
    assert written["dest"] == "s3://export-corpus/v1/exports/nemo" and written["samples"] == len(index)
    export("s3://export-corpus/v1", "lhotse")
    s3.invalidate_cache()
    assert not [p for p in s3.find("export-corpus/v1/exports") if ".tmp-" in p]
    lines = [json.loads(line) for line in s3.cat_file("export-corpus/v1/exports/nemo/manifest.json").splitlines()]
    assert {line["key"] for line in lines} == set(index)
    for line in lines:
        wave, rate = sf.read(io.BytesIO(s3.cat_file(f"export-corpus/v1/exports/nemo/{line['audio_filepath']}")))
        assert line["duration"] == pytest.approx(len(wave) / rate, abs=1e-9)
    s3.get("export-corpus/v1/exports/lhotse/", str(tmp_path / "shar"), recursive=True)
    assert {c.id for c in _cuts(tmp_path / "shar")} == set(index)
