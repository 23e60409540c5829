"""Discover: a manifest from headers only, for folders, globs and single files; clear input errors."""
from pathlib import Path

import pytest
import soundfile as sf

from pipelines.discover import Discover, InputError
from schemas.config import DiscoverConfig
from schemas.tables import MANIFEST_SCHEMA


@pytest.fixture
def discover() -> Discover:
    return Discover(DiscoverConfig())


def test_manifest_of_real_clips_has_header_facts(discover, clips):
    table = discover(str(clips))
    assert table.schema == MANIFEST_SCHEMA
    rows = {Path(r["uri"]).name: r for r in table.to_pylist()}
    assert set(rows) == {p.name for p in clips.iterdir() if p.suffix in {".flac", ".wav", ".mp3", ".opus", ".sph"}}
    jfk = rows["jfk.flac"]
    assert (jfk["sample_rate"], jfk["channels"], jfk["container"]) == (44100, 2, "flac")
    assert jfk["duration"] == pytest.approx(sf.info(clips / "jfk.flac").duration)
    assert rows["LJ002-0020.wav"]["sample_rate"] == 22050
    assert rows["common_voice_en_651325.mp3"]["codec"] == "mpeg_layer_iii"
    assert all(r["error"] is None for r in rows.values())
    assert len({r["id"] for r in rows.values()}) == len(rows)


def test_glob_and_single_file(discover, clips):
    assert discover(f"{clips}/*.flac").num_rows == 3
    assert discover(str(clips / "jfk.flac")).num_rows == 1
    assert discover(f"file://{clips}/LJ*.wav").num_rows == 2


def test_bad_files_are_rows_with_a_reason_not_a_crash(discover, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("this is not audio\n" * 50)
    (tmp_path / "notes.txt").write_text("ignored: not an audio extension")
    rows = {Path(r["uri"]).name: r for r in discover(str(tmp_path)).to_pylist()}
    assert set(rows) == {"empty.wav", "text.mp3"}
    assert rows["empty.wav"]["error"] == "empty file"
    assert rows["text.mp3"]["error"].startswith("unreadable header")


def test_same_base_name_in_two_folders_gets_two_ids(discover, tmp_path, clips):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.wav").write_bytes((clips / "LJ002-0020.wav").read_bytes())
    ids = discover(str(tmp_path)).column("id").to_pylist()
    assert len(set(ids)) == 2 and all(i.startswith("clip-") for i in ids)


def test_missing_or_empty_input_is_a_clear_error(discover, tmp_path):
    with pytest.raises(InputError, match="not found"):
        discover(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no audio files"):
        discover(str(tmp_path))
