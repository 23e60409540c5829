"""The ASR plug-in point: `asr.backend` names a backend class, imported only when used; the
backend's own scores travel in `AsrResult.extras` and land in the same index columns as before."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydantic
import pytest

from pipelines.asr.base import BACKENDS, backend_class, build_backend
from pipelines.records import AsrResult
from pipelines.state import jobstate
from pipelines.state.journal import AsrJournal
from schemas.config import AsrConfig, load_job_config
from tests.fakes import FAKE_ASR, FakeAsr, transcript


def test_the_default_is_faster_whisper_and_a_full_path_names_any_class():
    assert AsrConfig().backend == "faster-whisper" and BACKENDS["faster-whisper"] == "pipelines.asr.whisper:Transcriber"
    from pipelines.asr.whisper import Transcriber

    assert backend_class("faster-whisper") is Transcriber
    assert backend_class(FAKE_ASR) is FakeAsr
    backend = build_backend(AsrConfig(backend=FAKE_ASR, batch_size=3), cpu_threads=2)
    assert isinstance(backend, FakeAsr) and backend.config.cpu_threads == 2 and backend.config.batch_size == 3
    assert build_backend(AsrConfig(backend=FAKE_ASR, cpu_threads=1), cpu_threads=4).config.cpu_threads == 1


def test_unknown_backends_are_clear_errors():
    with pytest.raises(ValueError, match="not one of faster-whisper"):
        backend_class("whisperx")
    with pytest.raises(ValueError, match=r"cannot import no_such_module:Backend \(ModuleNotFoundError"):
        backend_class("no_such_module:Backend")
    with pytest.raises(ValueError, match="cannot import tests.fakes:Nope"):
        backend_class("tests.fakes:Nope")
    with pytest.raises(pydantic.ValidationError, match="backend"):
        AsrConfig(backend="not a name")


def test_building_a_backend_imports_none_of_its_heavy_modules():
    """The registry holds strings: the job's driver, the planner and the CLI never import
    faster-whisper or CTranslate2 unless they run that backend."""
    script = ("import sys; from pipelines.asr.base import build_backend; from schemas.config import AsrConfig;"
              "build_backend(AsrConfig(backend='tests.fakes:FakeAsr'));"
              "print(sorted(m for m in ('faster_whisper', 'ctranslate2', 'pipelines.asr.whisper') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_fake_is_deterministic_journaled_and_in_input_order(tmp_path):
    rng = np.random.default_rng(0)
    audios = [rng.normal(0, 0.1, n).astype(np.float32) for n in (48000, 8000, 160000, 8000)]
    fake = FakeAsr(AsrConfig(backend=FAKE_ASR, batch_size=2))
    journal = tmp_path / "journal"
    first = fake(audios, AsrJournal(str(journal)))
    assert first == [transcript(a) for a in audios] and all(r.text for r in first)
    assert [len(r.text.split()) for r in first] == [6, 1, 20, 1]  # two words a second, at least one
    assert sorted(p.name for p in journal.glob("*.json")) == ["alone-000000.json", "alone-000002.json"]
    (journal / "alone-000002.json").unlink()
    fake.counts.clear()
    assert fake(audios, AsrJournal(str(journal))) == first
    assert fake.counts == {"restored_windows": 2, "windows": 2, "alone": 2}


def test_extras_fill_the_same_index_columns_and_read_back_old_journals(tmp_path):
    """Whisper's scores are extras now: the index row holds the same values; a result saved by a
    journal before extras existed (scores as fields) reads back the same."""
    from pipelines.records import PreparedSegment
    from pipelines.stages.commit import UnitCommitter

    config = load_job_config("/in", str(tmp_path / "out"))
    segment = PreparedSegment("k", "s", "/s.wav", 0.0, 2.0, b"", {})
    result = AsrResult("And so my fellow", "en", 1.0, {"avg_logprob": -0.25, "no_speech_prob": 0.125})
    row = UnitCommitter(config)._index_row(0, segment, result)
    assert (row["avg_logprob"], row["no_speech_prob"]) == (-0.25, 0.125)
    bare = UnitCommitter(config)._index_row(0, segment, AsrResult("And so", "en", 1.0))
    assert (bare["avg_logprob"], bare["no_speech_prob"]) == (None, None)  # a backend without them: null
    old = {"text": "And so my fellow", "language": "en", "language_prob": 1.0, "avg_logprob": -0.25,
           "no_speech_prob": 0.125}
    assert AsrResult.from_json(old) == result
    journal = AsrJournal(str(tmp_path / "journal"))
    journal.put("alone-000000", {0: result}, [])
    assert AsrJournal(str(tmp_path / "journal")).get("alone-000000") == ({0: result}, [])


def test_the_backend_setting_is_part_of_the_output_and_its_default_locks_out_no_older_output(tmp_path):
    config = load_job_config(str(tmp_path / "in"), str(tmp_path / "out"))
    settings = jobstate.output_settings(config)
    assert settings["asr"].get("backend", "faster-whisper") == "faster-whisper"
    older = {**settings, "asr": {k: v for k, v in settings["asr"].items() if k != "backend"}}  # before asr.backend
    job = {"fingerprint": jobstate.fingerprint(older), "settings": older}
    assert jobstate.changed_settings(job, settings) == []
    fake = load_job_config(str(tmp_path / "in"), str(tmp_path / "out"), overrides={"asr.backend": FAKE_ASR})
    assert jobstate.changed_settings(job, jobstate.output_settings(fake)) == [
        f"asr.backend: None -> {FAKE_ASR!r}"]


def test_a_backend_gets_hardware_profiles_of_its_own():
    """A plan prices ASR from a saved profile of this machine: one calibrated on another backend
    (the fake's ASR costs nothing) must never price a faster-whisper run."""
    from pipelines.plan.calibrate import machine_key

    default, fake = (load_job_config("/in", "/out", overrides=o) for o in ({}, {"asr.backend": FAKE_ASR}))
    assert machine_key(default, 0) != machine_key(fake, 0)
    assert "tests-fakes-fakeasr" in machine_key(fake, 0) and "fakeasr" not in machine_key(default, 0)


def test_preflight_names_a_backend_that_does_not_import_and_leaves_other_backends_their_models():
    from pipelines.preflight import ModelError, check_model
    from schemas.config import AsrConfig

    with pytest.raises(ModelError, match=r"asr.backend 'no.such.module:Asr': cannot import"):
        check_model(AsrConfig(backend="no.such.module:Asr"))
    check_model(AsrConfig(backend="tests.fakes:FakeAsr", model="/no/whisper/model/here"))  # not Whisper's to check
