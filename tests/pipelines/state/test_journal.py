"""The prep journal: what a killed run had prepared is read back by the rerun, exactly, instead of
being decoded, cut and scored again; a kill mid-scoring costs only the scoring since the scores were
last saved (one file, saved again every journal.SCORES_SAVE_SECONDS)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.executor.ray import _prepare
from pipelines.metrics.scorer import QualityScorer
from pipelines.records import SourceFile
from pipelines.stages.prepare import SCORE_CHUNK_SECONDS, Preparer, score_chunks
from pipelines.state import journal as journal_module
from pipelines.state.journal import SCORES, SEGMENTED, PrepJournal, journal_url
from schemas.config import load_job_config
from tests.conftest import DEMO

CLEAN = "2412-153948-0000.flac"  # LibriSpeech read speech


def _files(tmp_path: Path) -> list[SourceFile]:
    names = (CLEAN, "jfk.flac", "libri-1088-134315-0000.wav", "2412-153948-0001.flac", "LJ002-0035.wav")
    return [SourceFile(name, str(DEMO / name)) for name in names] + [
        SourceFile("gone", str(tmp_path / "missing.wav"))]  # a decode reject rides along


def _same(a: tuple, b: tuple) -> None:
    (audio_a, unit_a), (audio_b, unit_b) = a, b
    fields = lambda u: [(s.key, s.source_id, s.source_uri, s.start, s.end, s.audio, s.scores)  # noqa: E731
                        for s in u.segments]
    assert fields(unit_b) == fields(unit_a)
    assert unit_b.rejects == unit_a.rejects and unit_b.input_seconds == unit_a.input_seconds
    assert len(audio_b) == len(audio_a) and all(
        x.dtype == np.float32 and np.array_equal(x, y) for x, y in zip(audio_b, audio_a))


def _counting_scorer(monkeypatch) -> list[int]:
    """Segments scored from now on, call by call."""
    calls: list[int] = []
    real = QualityScorer.score

    def score(self, audios):
        calls.append(len(audios))
        return real(self, audios)

    monkeypatch.setattr(QualityScorer, "score", score)
    return calls


def test_a_prepared_unit_is_read_back_instead_of_prepared_again(local_ray, tmp_path, monkeypatch):
    config = load_job_config(str(DEMO), str(tmp_path / "out"))
    journal = Path(journal_url(config.output, 0, "0" * 40))
    monkeypatch.setattr(journal_module, "SCORES_SAVE_SECONDS", 0.0)  # saved after every chunk
    first = _prepare(config, 0, _files(tmp_path), str(journal))
    audio, unit = first
    chunks = score_chunks(audio)
    assert len(chunks) >= 2, "too little speech to test chunks"
    assert sorted(p.name for p in journal.iterdir()) == sorted([SEGMENTED, SCORES])  # one scores file
    saved = json.loads((journal / SCORES).read_text())
    assert sorted(map(int, saved)) == [a for a, _ in chunks]
    assert unit.segments[0].scores["dnsmos_ovrl"] > 3 and [r["stage"] for r in unit.rejects] == ["decode"]

    monkeypatch.setattr(Preparer, "_segment_unit", lambda *args: pytest.fail("decoded again"))
    calls = _counting_scorer(monkeypatch)
    again = _prepare(config, 0, _files(tmp_path), str(journal))
    _same(first, again)
    # "decode" here is only the reference transcripts beside the audio, read again (not journaled)
    assert calls == [] and set(again[1].stage_seconds) <= {"journal", "quality", "decode"}

    del saved[str(chunks[-1][0])]  # the chunk a kill interrupted before the scores were saved again
    (journal / SCORES).write_text(json.dumps(saved))
    _same(first, _prepare(config, 0, _files(tmp_path), str(journal)))
    assert calls == [chunks[-1][1] - chunks[-1][0]]  # only that chunk was scored again

    with pytest.raises(pytest.fail.Exception, match="decoded again"):  # a unit with no journal
        _prepare(config, 1, _files(tmp_path), journal_url(config.output, 1, "0" * 40))


def test_an_unreadable_journal_is_ignored_and_the_unit_prepared_again(tmp_path):
    config = load_job_config(str(DEMO), str(tmp_path / "out"))
    preparer = Preparer(config)
    preparer.setup()
    prepared = preparer(3, _files(tmp_path)[:1])
    journal = PrepJournal(str(tmp_path / "unit"))
    journal.put_segmented(*prepared)
    journal.put_scores(0, [{"snr_db": 1.0}])
    assert not (tmp_path / "unit" / SCORES).exists()  # within SCORES_SAVE_SECONDS: kept, not saved yet
    _same(prepared, PrepJournal(str(tmp_path / "unit")).segmented())
    (tmp_path / "unit" / "scores-000004.json").write_text(json.dumps([{"snr_db": 2.0}]))  # an older journal's
    assert PrepJournal(str(tmp_path / "unit")).scores(4, 1) == [{"snr_db": 2.0}]
    (tmp_path / "unit" / SEGMENTED).write_bytes(b"ARROW1 cut short by a full disk")
    (tmp_path / "unit" / SCORES).write_text("{")
    again = PrepJournal(str(tmp_path / "unit"))
    assert again.segmented() is None and again.scores(0, 1) is None
    assert PrepJournal(str(tmp_path / "unit")).scores(0, 2) is None  # a chunk of another size: not ours
    assert PrepJournal(None).segmented() is None and PrepJournal(str(tmp_path / "none")).segmented() is None


def test_score_chunks_cover_every_segment_once_in_order():
    audios = [np.zeros(16000 * k // 4, dtype=np.float32) for k in (40, 40, 200, 4, 4, 4)]  # 10, 10, 50, 1 s x3
    chunks = score_chunks(audios)
    assert chunks == [(0, 2), (2, 3), (3, 6)]  # a 50 s segment is a chunk of its own
    assert score_chunks([]) == [] and SCORE_CHUNK_SECONDS == 30.0
