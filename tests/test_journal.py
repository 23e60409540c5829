"""The prep journal: a unit a killed run had prepared is read back whole by the rerun, exactly,
instead of being decoded, segmented and scored again."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.engine import _prepare
from pipelines.journal import PREPARED, PrepJournal, journal_url
from pipelines.prepare import Preparer, SourceFile
from schemas.config import load_job_config
from tests.conftest import DEMO

CLEAN = "2412-153948-0000.flac"  # LibriSpeech read speech


def _files(tmp_path: Path) -> list[SourceFile]:
    return [SourceFile(name, str(DEMO / name)) for name in (CLEAN, "jfk.flac")] + [
        SourceFile("gone", str(tmp_path / "missing.wav"))]  # a decode reject rides along


def _same(a: tuple, b: tuple) -> None:
    (audio_a, unit_a), (audio_b, unit_b) = a, b
    fields = lambda u: [(s.key, s.source_id, s.source_uri, s.start, s.end, s.audio, s.scores)  # noqa: E731
                        for s in u.segments]
    assert fields(unit_b) == fields(unit_a)
    assert unit_b.rejects == unit_a.rejects and unit_b.input_seconds == unit_a.input_seconds
    assert len(audio_b) == len(audio_a) and all(
        x.dtype == np.float32 and np.array_equal(x, y) for x, y in zip(audio_b, audio_a))


def test_a_prepared_unit_is_read_back_instead_of_prepared_again(local_ray, tmp_path, monkeypatch):
    config = load_job_config(str(DEMO), str(tmp_path / "out"))
    journal = journal_url(config.output, 0, "0" * 40)
    first = _prepare(config, 0, _files(tmp_path), journal)
    assert (Path(journal) / PREPARED).exists()
    audio, unit = first
    assert len(unit.segments) == len(audio) >= 3 and unit.segments[0].scores["dnsmos_ovrl"] > 3
    assert [r["stage"] for r in unit.rejects] == ["decode"]

    monkeypatch.setattr(Preparer, "__call__", lambda *args: pytest.fail("prepared again"))
    again = _prepare(config, 0, _files(tmp_path), journal)
    _same(first, again)
    assert set(again[1].stage_seconds) == {"journal"}  # this run spent only the read

    other = journal_url(config.output, 1, "0" * 40)  # a unit with no journal is prepared
    with pytest.raises(pytest.fail.Exception, match="prepared again"):
        _prepare(config, 1, _files(tmp_path), other)


def test_an_unreadable_journal_is_ignored_and_the_unit_prepared_again(tmp_path):
    config = load_job_config(str(DEMO), str(tmp_path / "out"))
    preparer = Preparer(config)
    preparer.setup()
    prepared = preparer(3, _files(tmp_path)[:1])
    journal = PrepJournal(str(tmp_path / "unit"))
    journal.put(*prepared)
    _same(prepared, journal.get())
    (tmp_path / "unit" / PREPARED).write_bytes(b"ARROW1 cut short by a full disk")
    assert journal.get() is None
    assert PrepJournal(None).get() is None and PrepJournal(str(tmp_path / "none")).get() is None

