"""Discover: a manifest from headers only, for folders, globs and single files; clear input errors."""
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.stages.discover import Discover, InputError
from schemas.config import DiscoverConfig
from schemas.tables import MANIFEST_SCHEMA
from tests.fakes import ROOT


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


# ----------------------------------------------------------------------------- nothing found vanishes

def _rows(discover, url: str) -> dict[str, dict]:
    return {r["uri"]: r for r in discover(url).to_pylist()}


def test_links_are_followed_once_and_every_odd_entry_is_a_row_with_its_reason(discover, tmp_path, clips):
    """A symlink to a file, a linked folder, a link loop, a dangling link and a FIFO: each is a file
    to read or a row that says why not; a file reached twice is read once, under its own path."""
    root, outside = tmp_path / "in", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(clips / "jfk.flac", root / "real" / "jfk.flac")
    shutil.copy(clips / "LJ002-0020.wav", outside / "lj.wav")
    (root / "a-link.flac").symlink_to(root / "real" / "jfk.flac")  # sorts before its target
    (root / "outside.wav").symlink_to(outside / "lj.wav")  # the only path to this file
    (root / "aliased").symlink_to(root / "real")  # the same folder again
    (root / "linked-elsewhere").symlink_to(outside)  # a folder only a link reaches: its files are read
    (root / "real" / "up").symlink_to(root)  # a loop
    (root / "gone.flac").symlink_to(root / "missing.flac")
    (root / "self.wav").symlink_to(root / "self.wav")
    os.mkfifo(root / "pipe.wav")
    rows = _rows(discover, str(root))
    readable = {uri for uri, r in rows.items() if r["error"] is None}
    assert readable == {f"{root}/real/jfk.flac", f"{root}/outside.wav"}
    assert rows[f"{root}/outside.wav"]["duration"] == pytest.approx(sf.info(outside / "lj.wav").duration)
    errors = {uri.removeprefix(f"{root}/"): r["error"] for uri, r in rows.items() if r["error"]}
    assert errors == {
        "a-link.flac": "same file as another input path (a link): read once",
        "aliased": "link to a folder already listed: read once",
        "real/up": "link to a folder already listed: read once",
        "linked-elsewhere/lj.wav": "same file as another input path (a link): read once",
        "gone.flac": "dangling link: its target does not exist",
        "self.wav": "link loop: the link points back at itself",
        "pipe.wav": "not a regular file (a FIFO)",
    }


def test_a_name_that_is_not_utf8_is_one_row_not_a_crash(discover, tmp_path, clips):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(clips / "jfk.flac", root / "fine.flac")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.flac"), "wb") as fh:  # Latin-1 bytes
        fh.write((clips / "jfk.flac").read_bytes())
    table = discover(str(root))
    table.to_pylist()  # every string in it encodes
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert rows[f"{root}/caf\\xe9.flac"]["error"] == "file name is not valid UTF-8: rename the file to read it"
    assert rows[f"{root}/fine.flac"]["error"] is None


def test_a_path_with_glob_characters_that_exists_is_read_literally(discover, tmp_path, clips):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("take [1] *?.flac", "take 1 x.flac"):
        shutil.copy(clips / "jfk.flac", root / name)
    assert list(_rows(discover, str(root / "take [1] *?.flac"))) == [f"{root}/take [1] *?.flac"]
    assert len(_rows(discover, f"{root}/take*.flac")) == 2  # a path that does not exist is a glob


def test_headers_impossible_for_the_file_size_are_rejected_without_a_duration(discover, tmp_path):
    """A 287 KB WAV whose header says 1 Hz (40 hours) and random bytes named .flac."""
    data = np.random.default_rng(0).integers(-2000, 2000, 143_000).astype("<i2").tobytes()
    header = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, 1, 2, 2, 16) + b"data" + struct.pack("<I", len(data)))
    (tmp_path / "liar.wav").write_bytes(header + data)
    (tmp_path / "random.flac").write_bytes(np.random.default_rng(1).bytes(20_000))
    rows = {Path(u).name: r for u, r in _rows(discover, str(tmp_path)).items()}
    assert rows["liar.wav"]["error"] == "impossible header: sample rate 1 Hz"
    assert rows["liar.wav"]["duration"] is None  # units and plans must not see 40 hours
    assert rows["random.flac"]["error"] == "not a valid FLAC file: no sample rate or channels in its header"
    assert rows["random.flac"]["duration"] is None


def test_the_output_inside_its_input_is_not_read(tmp_path, clips):
    root = tmp_path / "in"
    (root / "out" / "report" / "audio").mkdir(parents=True)
    shutil.copy(clips / "jfk.flac", root / "jfk.flac")
    shutil.copy(clips / "jfk.flac", root / "out" / "report" / "audio" / "sample.flac")
    uris = Discover(DiscoverConfig(), exclude=str(root / "out")).__call__(str(root)).column("uri").to_pylist()
    assert uris == [f"{root}/jfk.flac"]


def test_a_folder_that_cannot_be_entered_is_a_row(tmp_path, clips):
    """Root reads any folder, so the listing runs without the capabilities that allow it."""
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    shutil.copy(clips / "jfk.flac", root / "locked" / "jfk.flac")
    shutil.copy(clips / "jfk.flac", root / "open.flac")
    (root / "locked").chmod(0)
    script = ("import json, sys; from pipelines.stages.listing import list_input; "
              "print(json.dumps([vars(e) for e in list_input(sys.argv[1], {'flac'})[1]]))")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", script, str(root)], check=True,
                             capture_output=True, text=True, cwd=ROOT).stdout
    finally:
        (root / "locked").chmod(0o755)
    entries = {e["path"]: e for e in json.loads(out)}
    assert entries[f"{root}/locked"]["error"] == "folder cannot be read: permission denied"
    assert entries[f"{root}/open.flac"]["error"] is None
