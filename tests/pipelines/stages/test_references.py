"""Reference transcripts (issue 17): found beside the audio or in the user's manifest, split over a
file's segments by alignment, scored as WER/CER at commit and filtered on, with the reason recorded."""
from __future__ import annotations

import json
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest

from pipelines.metrics.text import error_rate
from pipelines.records import AsrResult, PreparedSegment, PreparedUnit, SourceFile
from pipelines.stages import commit
from pipelines.stages.references import (
    MAX_ALIGN_CELLS,
    ReferenceError,
    References,
    read_manifest,
    segment_references,
    split_reference,
)
from schemas.config import DiscoverConfig, load_job_config
from tests.conftest import DEMO, moto_s3, references

AMI = "I'M ABIGAIL CLAFLIN YOU CAN CALL ME ABBIE"


def test_a_file_of_one_segment_gets_its_whole_reference():
    assert split_reference(AMI, ["I'm Abigail."]) == [AMI]


def test_a_files_reference_is_split_over_its_segments_by_the_asr_words():
    assert split_reference(AMI, ["I'm Abigail Claflin.", "You can call me Abby."]) == [
        "I'M ABIGAIL CLAFLIN", "YOU CAN CALL ME ABBIE"]
    # a word the ASR missed goes with the word before it; a substituted one with the word it became
    assert split_reference("a b c d e f", ["a b", "x e f"]) == ["a b", "c d e f"]
    # words the ASR missed before its first word go to the first segment that heard any
    assert split_reference("a b c d", ["", "c d"]) == ["", "a b c d"]
    # nothing to align against, or too much: no reference rather than a wrong one
    assert split_reference("a b", ["", ""]) == [None, None]
    many = " ".join(["word"] * (MAX_ALIGN_CELLS // 1000 + 1))
    assert split_reference(many, ["word " * 500, "word " * 500]) == [None, None]


def test_segment_references_follow_each_segments_file():
    refs = {"a": "hello world", "b": "one two three"}
    segments = [("a", "hello"), ("b", "one two"), ("b", "three"), ("c", "no reference")]
    assert segment_references(refs, segments) == ["hello world", "one two", "three", None]


def test_error_rates_compare_normalised_text():
    assert error_rate("And so, my fellow Americans!", "AND SO MY FELLOW AMERICANS") == 0.0
    assert error_rate("In 1813.", "IN EIGHTEEN THIRTEEN") == pytest.approx(2 / 3)  # numbers are not spelled out
    assert error_rate("Hello word", "HELLO WORLD", "char") == pytest.approx(1 / 11)
    assert error_rate("anything", None) is None  # no reference: not measured
    assert error_rate("words heard", "") == 1.0 and error_rate("", "") is None


def _copies(tmp_path, names: list[str]) -> dict[str, SourceFile]:
    folder = tmp_path / "corpus"
    folder.mkdir()
    files = {}
    for name in names:
        shutil.copy(DEMO / name, folder / name)
        files[name] = SourceFile(name, str(folder / name))
    return files


def test_references_beside_the_audio_librispeech_libritts_and_mfa(tmp_path):
    files = _copies(tmp_path, ["jfk.flac", "LJ002-0020.wav", "LJ002-0035.wav", "2412-153948-0001.flac"])
    folder = tmp_path / "corpus"
    refs = references()
    (folder / "jfk.txt").write_text(refs["jfk.flac"]["text"] + "\n")  # LibriSpeech-style
    (folder / "LJ002-0020.normalized.txt").write_text("In eighteen thirteen\n")  # LibriTTS: normalized wins
    (folder / "LJ002-0020.original.txt").write_text("In 1813\n")
    (folder / "LJ002-0020.txt").write_text("not this one\n")
    (folder / "LJ002-0035.lab").write_text("EIGHT THE PRESS\nYARD\n")  # MFA .lab, wrapped
    found = References(DiscoverConfig())(list(files.values()))
    assert found == {"jfk.flac": refs["jfk.flac"]["text"], "LJ002-0020.wav": "In eighteen thirteen",
                     "LJ002-0035.wav": "EIGHT THE PRESS YARD"}  # 2412-...-0001 has none
    excerpt = SourceFile("jfk.flac", files["jfk.flac"].uri, offset=0.0, limit=5.0, context=32.0)
    assert References(DiscoverConfig())([excerpt]) == {}  # a file cut into excerpts spans units
    assert References(DiscoverConfig(reference_extensions=()))(list(files.values())) == {}


def test_references_from_the_users_manifest_win_and_bad_ones_are_named(tmp_path):
    files = _copies(tmp_path, ["jfk.flac", "LJ002-0035.wav"])
    (tmp_path / "corpus" / "jfk.txt").write_text("beside the audio\n")
    manifest = tmp_path / "corpus" / "references.jsonl"  # the real clips' own, relative paths
    shutil.copy(DEMO / "references.jsonl", manifest)
    config = DiscoverConfig(reference_manifest=str(manifest), reference_path_column="file")
    found = References(config)(list(files.values()))
    assert found == {"jfk.flac": references()["jfk.flac"]["text"], "LJ002-0035.wav": "EIGHT THE PRESS YARD"}

    csv = tmp_path / "refs.csv"  # another folder: paths relative to the manifest's, or absolute
    csv.write_text(f"audio_filepath,text\ncorpus/jfk.flac,from the csv\n{files['LJ002-0035.wav'].uri},absolute\n")
    assert read_manifest(DiscoverConfig(reference_manifest=str(csv))) == {
        files["jfk.flac"].uri: "from the csv", files["LJ002-0035.wav"].uri: "absolute"}
    with pytest.raises(ReferenceError, match=r"no column \['audio_filepath'\].*reference_path_column"):
        read_manifest(DiscoverConfig(reference_manifest=str(manifest)))
    with pytest.raises(ReferenceError, match="not found"):
        read_manifest(DiscoverConfig(reference_manifest=str(tmp_path / "missing.jsonl")))


@pytest.fixture
def bucket():
    """A bucket on the loopback moto server the environment names (conftest), for this test only."""
    with moto_s3() as fs:
        fs.mkdir("refs")
        yield fs


def test_references_beside_audio_and_in_a_manifest_on_s3(bucket):
    for name in ("jfk.flac", "LJ002-0035.wav", "LJ002-0020.wav"):
        bucket.pipe(f"refs/corpus/{name}", b"audio")  # never read here: only its name counts
    bucket.pipe("refs/corpus/jfk.txt", b"AND SO\n")
    bucket.pipe("refs/corpus/LJ002-0035.lab", b"EIGHT THE PRESS YARD\n")
    bucket.pipe("refs/lists/refs.jsonl", b'{"audio_filepath": "s3://refs/corpus/LJ002-0020.wav", "text": "IN 1813"}\n')
    files = [SourceFile(name, f"s3://refs/corpus/{name}") for name in ("jfk.flac", "LJ002-0035.wav", "LJ002-0020.wav")]
    assert References(DiscoverConfig(reference_manifest="s3://refs/lists/refs.jsonl"))(files) == {
        "jfk.flac": "AND SO", "LJ002-0035.wav": "EIGHT THE PRESS YARD", "LJ002-0020.wav": "IN 1813"}


def test_a_job_with_an_unreadable_reference_manifest_stops_before_any_work(tmp_path):
    from pipelines.job import run_job

    _copies(tmp_path, ["jfk.flac"])
    config = load_job_config(str(tmp_path / "corpus"), str(tmp_path / "out"),
                             overrides={"discover.reference_manifest": str(tmp_path / "refs.csv")})
    with pytest.raises(ReferenceError, match="refs.csv: not found"):
        run_job(config)
    assert not (tmp_path / "out").exists()


def test_wer_and_cer_reach_the_index_and_json_and_the_filter_records_its_reason(tmp_path):
    config = load_job_config(str(tmp_path), str(tmp_path / "out"),
                             overrides={"quality.max_wer": 0.5, "quality.min_dnsmos_ovrl": None})
    scores = {"dnsmos_sig": 3.0, "dnsmos_bak": 3.0, "dnsmos_ovrl": 3.0, "snr_db": 30.0, "clipping": 0.0,
              "loudness_lufs": -20.0}
    spans = [("jfk", 0.0, 4.0), ("ami", 0.0, 2.0), ("ami", 2.5, 4.5), ("lj", 0.0, 2.0), ("none", 0.0, 2.0)]
    segments = [PreparedSegment(f"{src}_{i}", src, f"file:///{src}.wav", start, end, f"audio{i}".encode(),
                                {**scores, "audio_hash": f"h{i}"}) for i, (src, start, end) in enumerate(spans)]
    texts = ["And so, my fellow Americans.", "I'm Abigail Claflin.", "You can call me Abby.", "In 1813.", "Hello."]
    results = [AsrResult(text, "en", 1.0, {"avg_logprob": -0.2, "no_speech_prob": 0.01}) for text in texts]
    refs = {"jfk": "AND SO MY FELLOW AMERICANS", "ami": AMI, "lj": "IN EIGHTEEN THIRTEEN"}
    commit.UnitCommitter(config)(PreparedUnit(0, segments, references=refs), results, "digest")

    out = tmp_path / "out"
    index = {r["key"]: r for r in pq.read_table(out / "index" / "part-000000.parquet").to_pylist()}
    assert [(k, r["reference"], r["wer"]) for k, r in index.items()] == [
        ("jfk_0", "AND SO MY FELLOW AMERICANS", 0.0), ("ami_1", "I'M ABIGAIL CLAFLIN", 0.0),
        ("ami_2", "YOU CAN CALL ME ABBIE", pytest.approx(0.2)), ("none_4", None, None)]
    assert index["ami_2"]["cer"] == pytest.approx(2 / 21, abs=1e-3)  # "abbie" -> "abby": 2 of 21 characters
    [dropped] = pq.read_table(out / "rejects" / "part-000000.parquet").to_pylist()
    assert (dropped["key"], dropped["metric"], dropped["reason"]) == ("lj_3", "wer", "wer 0.667 > 0.5")
    assert dropped["reference"] == "IN EIGHTEEN THIRTEEN" and dropped["text"] == "In 1813."
    with tarfile.open(next((out / "shards").glob("*.tar"))) as tar:
        meta = json.loads(tar.extractfile("ami_2.json").read())
    assert (meta["text"], meta["reference"], meta["wer"]) == ("You can call me Abby.", "YOU CAN CALL ME ABBIE",
                                                              pytest.approx(0.2))
