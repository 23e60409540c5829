"""Speakers on real speech: the GE2E embeddings tell the real clips' speakers apart, a recording of two
speakers is split where the voice changes, and a job labels its samples with them."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipelines import report
from pipelines.export import export
from pipelines.job import run_job
from pipelines.loader import read_index
from pipelines.metrics.speaker import SpeakerEncoder
from pipelines.stages.audio import ASR_RATE, Resampler, Waveform
from pipelines.stages.speakers import SpeakerSplitter, speaker_windows
from pipelines.stages.vad import Segmenter, Span
from schemas.config import AudioConfig, SpeakersConfig, VadConfig
from tests.conftest import DEMO, small_units_config

SPEAKER_A = ("2412-153948-0000.flac", "2412-153948-0001.flac")  # LibriSpeech reader 2412
SPEAKER_B = "libri-1088-134315-0000.wav"  # LibriSpeech reader 1088
LJ = ("LJ002-0020.wav", "LJ002-0035.wav")  # LJ Speech: one reader


def _speech(name: str) -> np.ndarray:
    """A demo clip as 16 kHz mono float32."""
    samples, rate = sf.read(DEMO / name, dtype="float32", always_2d=True)
    return Resampler(AudioConfig()).many([Waveform(samples.mean(axis=1), rate)], ASR_RATE)[0].samples


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder("cpu")


@pytest.fixture(scope="module")
def splitter(encoder) -> SpeakerSplitter:
    return SpeakerSplitter(SpeakersConfig(enabled=True, device="cpu"), encoder)


def _vad_spans(audio: np.ndarray) -> list[Span]:
    segmenter = Segmenter(VadConfig())
    segmenter.setup()
    spans, _ = segmenter(audio)
    return spans


def test_embeddings_tell_real_speakers_apart(encoder):
    embed = {name: encoder.embed(_speech(name)) for name in (*SPEAKER_A, SPEAKER_B, *LJ)}
    assert all(abs(np.linalg.norm(e) - 1) < 1e-4 and e.shape == (256,) for e in embed.values())
    same_a = float(embed[SPEAKER_A[0]] @ embed[SPEAKER_A[1]])
    same_lj = float(embed[LJ[0]] @ embed[LJ[1]])  # 1.5 s clips: less to go on
    different = [float(embed[a] @ embed[b]) for a in SPEAKER_A for b in (SPEAKER_B, *LJ)]
    assert same_a > 0.9 and same_lj > 0.75, (same_a, same_lj)
    assert max(different) < min(same_a, same_lj) - 0.05, different


def test_two_speakers_in_one_recording_are_split_at_the_change(splitter):
    """Reader A, then reader B, then A again, as one file cut by the real VAD: two speakers, each
    boundary within 0.5 s, and the third clip given the first clip's speaker."""
    first, second, third = _speech(SPEAKER_A[0]), _speech(SPEAKER_B), _speech(SPEAKER_A[1])
    audio = np.concatenate([first, second, third])
    changes = [len(first) / ASR_RATE, (len(first) + len(second)) / ASR_RATE]
    turns = splitter(audio, _vad_spans(audio))

    assert {t.speaker for t in turns} == {0, 1}
    found = [t.span.start for prev, t in zip(turns, turns[1:]) if t.speaker != prev.speaker]
    assert len(found) == 2 and all(abs(f - c) < 0.5 for f, c in zip(found, changes)), (found, changes)

    def speaker_at(second: float) -> int:
        return next(t.speaker for t in turns if t.span.start <= second < t.span.end)
    assert speaker_at(changes[0] / 2) == speaker_at(changes[1] + 3) != speaker_at(sum(changes) / 2)
    assert all(t.purity >= 0.9 for t in turns)
    for turn in turns:  # the split pieces tile the speech VAD found: nothing lost, nothing twice
        assert turn.span.seconds >= SpeakersConfig().min_turn_seconds


@pytest.mark.parametrize("names", [("ES2011a.Headset-0-40s-46s.wav",), LJ, ("jfk.flac",)],
                         ids=["ami-headset", "ljspeech", "jfk"])
def test_one_voice_is_one_speaker(splitter, names):
    """The AMI meeting clip (one participant's headset), the two LJ Speech clips as one recording, and
    JFK's address over crowd noise each come out as one speaker, unsplit."""
    audio = np.concatenate([np.concatenate([_speech(n), np.zeros(ASR_RATE // 2, np.float32)]) for n in names])
    spans = _vad_spans(audio)
    turns = splitter(audio, spans)
    assert {t.speaker for t in turns} == {0}
    assert len(turns) == len(spans)


def test_job_labels_samples_with_speakers(clips, local_ray, tmp_path):
    """speakers.enabled through a whole job (fake ASR): the A-B-A recording's samples carry
    `<source_id>/spk0|1`, purity and a float16 embedding in the index, and speaker + purity in KEY.json;
    other inputs get one speaker each."""
    folder = tmp_path / "in"
    folder.mkdir()
    audio = np.concatenate([_speech(SPEAKER_A[0]), _speech(SPEAKER_B), _speech(SPEAKER_A[1])])
    sf.write(folder / "two-readers.flac", audio, ASR_RATE)
    (folder / "lj.wav").write_bytes((DEMO / LJ[0]).read_bytes())
    config = small_units_config(str(folder), str(tmp_path / "out"), **{"speakers.enabled": True})
    summary = run_job(config)
    assert summary["complete"]

    index = pq.read_table(tmp_path / "out" / "index").to_pylist()
    by_source: dict[str, set[str]] = {}
    for row in index:
        by_source.setdefault(row["source_uri"].rsplit("/", 1)[-1], set()).add(row["speaker"])
        assert row["speaker"].startswith(row["source_id"] + "/spk")
        assert 0 < row["speaker_purity"] <= 1 and len(row["speaker_embedding"]) == 256
    assert len(by_source["two-readers.flac"]) == 2 and len(by_source["lj.wav"]) == 1
    schema = pq.read_schema(next((tmp_path / "out" / "index").glob("*.parquet")))
    assert str(schema.field("speaker_embedding").type) == "list<element: halffloat>"

    shard = sorted((tmp_path / "out").glob("shards/*.tar"))[0]
    with tarfile.open(shard) as tar:
        meta = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert meta and all("speaker_purity" in m and "speaker_embedding" not in m for m in meta)
    assert {m["speaker"] for m in meta} <= {row["speaker"] for row in index}

    # the report counts them and lists hours per speaker
    summary = report.gather(str(tmp_path / "out"))
    assert summary.speakers == 3 and len(summary.speaker_hours) == 3
    assert sum(s.hours for s in summary.speaker_hours) == pytest.approx(summary.kept_hours)
    assert all(f"<td data-label=\"speaker\">{s.speaker}</td>" in report.page(summary) for s in summary.speaker_hours)

    # a trainer picks one speaker's samples with the loader's filter, and Lhotse supervisions carry it
    one = sorted(by_source["two-readers.flac"])[1]
    picked = read_index(str(tmp_path / "out"), f"speaker == '{one}'").to_pylist()
    assert picked and {r["speaker"] for r in picked} == {one}
    from lhotse import CutSet
    dest = export(str(tmp_path / "out"), "lhotse", str(tmp_path / "shar"))["dest"]
    speakers = {cut.id: cut.supervisions[0].speaker for cut in CutSet.from_shar(in_dir=dest)}
    assert speakers == {row["key"]: row["speaker"] for row in index}


def test_the_plan_counts_the_windows_the_stage_embeds(splitter):
    """`speaker_windows`, which prices the stage in a plan, counts the windows the splitter embeds
    on real speech (short segments, long ones, and the tail window of each)."""
    audio = np.concatenate([_speech(SPEAKER_A[0]), _speech(SPEAKER_B), _speech(LJ[0])])
    spans = _vad_spans(audio)
    embedded = len(splitter._windows(audio, spans).centres)
    pieces = [audio[round(s.start * ASR_RATE): round(s.end * ASR_RATE)] for s in spans]
    assert embedded > 2 * len(spans) and speaker_windows(splitter.config, pieces) == embedded


def _prep_seconds(plan) -> float:
    return next(s.seconds for s in plan.stages if s.name == "prep")


def test_a_plan_prices_the_stage_per_window_and_a_run_teaches_its_cost(clips, local_ray, tmp_path):
    """A job with speakers on (fake ASR): the quick bound prices the stage at a default cost per window
    and says so; the run measures it, and the next plan prices this input's windows at the learned
    cost, which a plan with the stage off leaves out."""
    from pipelines.plan.estimator import SPEAKER_WINDOW_SECONDS
    from pipelines.plan.planning import plan_job

    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "two-readers.flac", np.concatenate([_speech(SPEAKER_A[0]), _speech(SPEAKER_B)]), ASR_RATE)
    state = {"plan.profiles_dir": str(tmp_path / "profiles"), "plan.history_path": str(tmp_path / "h.jsonl")}
    config = small_units_config(str(folder), str(tmp_path / "out"), **{"speakers.enabled": True, **state})
    quick, manifest = plan_job(config)
    windows = quick.data.speaker_windows_per_input_second
    assert 1.5 < windows < 3.0  # 1.6 s windows every 0.4 s over ~85% speech, plus each segment's tail
    assert quick.hardware.speakers_seconds_per_input_second == pytest.approx(SPEAKER_WINDOW_SECONDS * windows)
    assert any("speakers priced at 3 ms per window" in note for note in quick.notes), quick.notes

    summary = run_job(config, manifest=manifest, plan=quick.model_dump(mode="json"))
    spent = summary["stage_seconds"]["speakers"]
    assert spent > 0
    (tmp_path / "more").mkdir()
    sf.write(tmp_path / "more" / "lj.flac", np.concatenate([_speech(n) for n in LJ]), ASR_RATE)
    more = {"input": str(tmp_path / "more"), "output": str(tmp_path / "out2")}
    learned, _ = plan_job(config.model_copy(update=more))
    per_window = learned.hardware.speaker_seconds_per_window
    assert per_window == pytest.approx(spent / summary["this_run"]["input_seconds"] / windows, rel=0.5)
    assert learned.hardware.speakers_seconds_per_input_second == pytest.approx(
        per_window * learned.data.speaker_windows_per_input_second)
    assert not any("speakers priced at" in note for note in learned.notes)
    # the same machine reading for both plans (a plan scales its costs by the load it reads)
    from pipelines.plan import planning
    from pipelines.plan.load import read_load

    reading = read_load()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(planning, "read_load", lambda: reading)
        on, _ = plan_job(config.model_copy(update=more))
        off, _ = plan_job(config.model_copy(update={**more, "speakers": config.speakers.model_copy(update={"enabled": False})}))
    assert off.hardware.speakers_seconds_per_input_second == 0.0
    assert _prep_seconds(off) < _prep_seconds(on)
