"""Bad input, end to end: every broken, odd or hostile file ends up as a sample or as a reject
with a stage and a reason (never a failed job), and bad buckets or credentials stop `voxmill run`
before any work with one clear line.

One input folder holds all the bad files and the odd names, so two job runs (into two outputs,
for key stability) cover everything: CPU is scarce where these tests run.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import uuid
from pathlib import Path

import boto3
import jiwer
import numpy as np
import pyarrow.dataset as ds
import pytest
import requests
import s3fs
import soundfile as sf
import soxr
from typer.testing import CliRunner

from flows.cli import app
from pipelines.job import run_job
from tests.conftest import DEMO, REAL_ASR, S3_PORT, moto_s3, small_units_config
from tests.fakes import FAKE_ASR

SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"

# file -> (stage, reason pattern) of the one reject it must give; every other input is a sample
REJECTED = {
    "empty.wav": ("discover", r"empty file"),
    "random-bytes.wav": ("discover", r"unreadable header: InvalidDataError: Invalid data found when processing input"),
    "notes.mp3": ("discover", r"unreadable header: InvalidDataError: Invalid data found when processing input"),
    # FLAC cut in half: libsndfile loses sync and FFmpeg fails on the cut frame, so the file is a
    # reject that says where it broke (the 5.4 s before the cut are not kept as a sample)
    "truncated.flac": ("decode", r"truncated or corrupt: decoding failed at 5\.\d\d s \(InvalidDataError: .+\)"),
    "header-only.wav": ("decode", r"no audio samples"),
    "nan-inf.wav": ("decode", r"non-finite samples \(NaN or Inf\)"),
    "tiny-50ms.wav": ("decode", r"too short \(under 100 ms of audio\)"),
    "silence.wav": ("vad", r"no speech found"),
    # Silero finds no speech in white noise, so Whisper never sees it: no hallucinated sample
    "white-noise.wav": ("vad", r"no speech found"),
    # what a listing meets besides files: each is one row too, never silently gone
    "linked-speech.wav": ("discover", r"same file as another input path \(a link\): read once"),
    "linked-names": ("discover", r"link to a folder already listed: read once"),
    "loop": ("discover", r"link to a folder already listed: read once"),
    "dangling.flac": ("discover", r"dangling link: its target does not exist"),
    "fifo.wav": ("discover", r"not a regular file \(a FIFO\)"),
    "latin1-\\xe9.wav": ("discover", r"file name is not valid UTF-8: rename the file to read it"),
    "liar.wav": ("discover", r"impossible header: sample rate 1 Hz"),
    "random-bytes.flac": ("discover", r"not a valid FLAC file: no sample rate or channels in its header"),
}
LINKED_FROM_OUTSIDE = "from-outside.wav"  # a link to a file outside the input: read through the link
SPEECH = ("speech-8k-8bit.wav", "surround-6ch.wav")
NAMES = ("with spaces (take 2).wav", "héllo wörld – 日本語.wav", "..dots..in..name.wav",
         "a/same.wav", "b/same.wav", "take [1] *?.wav")
COLON = "odd::colon.wav"  # fsspec reads "::" as a URL chain separator


def _write_bad_files(root: Path, voice: np.ndarray, rate: int) -> None:
    """Each broken input as a user's collection really holds it."""
    rng = np.random.default_rng(7)
    (root / "empty.wav").write_bytes(b"")
    flac = (DEMO / "jfk.flac").read_bytes()
    (root / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    (root / "random-bytes.wav").write_bytes(rng.bytes(20_000))
    (root / "notes.mp3").write_text("meeting notes, not audio\n" * 40)
    sf.write(root / "header-only.wav", np.zeros(0, np.float32), 16000)
    sf.write(root / "silence.wav", np.zeros(3 * 16000, np.float32), 16000)
    sf.write(root / "white-noise.wav", np.clip(0.3 * rng.standard_normal(5 * 16000), -1, 1), 16000)
    broken = voice.copy()
    broken[[1000, 5000, 9000]] = [np.nan, np.inf, -np.inf]
    sf.write(root / "nan-inf.wav", broken, rate, subtype="FLOAT")
    sf.write(root / "tiny-50ms.wav", voice[rate: rate + rate // 20], rate)


def _write_speech(root: Path, voice: np.ndarray, rate: int) -> None:
    """Real speech in awkward formats, and one real clip under awkward names."""
    subprocess.run(["sox", str(DEMO / "jfk.flac"), "-r", "8000", "-b", "8", "-e", "unsigned-integer",
                    "-c", "1", str(root / "speech-8k-8bit.wav")], check=True, capture_output=True)
    surround = np.zeros((len(voice), 6), np.float32)
    surround[:, 2] = voice  # 5.1 layout: dialogue lives in the centre channel
    sf.write(root / "surround-6ch.wav", surround, rate, subtype="PCM_16")
    clip = (DEMO / "LJ002-0020.wav").read_bytes()
    for name in (*NAMES, COLON):
        (root / "names" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "names" / name).write_bytes(clip)


def _write_odd_entries(root: Path) -> None:
    """Links (to a file, a folder, a loop, nowhere, outside), a FIFO, a name that is not UTF-8 and
    headers that lie: what a real collection on a shared disk holds besides plain files."""
    (root / "linked-speech.wav").symlink_to(root / "speech-8k-8bit.wav")
    (root / "linked-names").symlink_to(root / "names")
    (root / "loop").symlink_to(root)
    (root / "dangling.flac").symlink_to(root / "missing.flac")
    os.mkfifo(root / "fifo.wav")
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9.wav"), "wb") as fh:
        fh.write((DEMO / "LJ002-0020.wav").read_bytes())
    data = np.random.default_rng(3).integers(-2000, 2000, 143_000).astype("<i2").tobytes()
    (root / "liar.wav").write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
                                    + struct.pack("<IHHIIHH", 16, 1, 1, 1, 2, 2, 16) + b"data"
                                    + struct.pack("<I", len(data)) + data)  # says 1 Hz: 40 hours
    (root / "random-bytes.flac").write_bytes(np.random.default_rng(4).bytes(20_000))
    outside = root.parent / "outside"
    outside.mkdir()
    shutil.copy(DEMO / "LJ002-0035.wav", outside / "lj.wav")
    (root / LINKED_FROM_OUTSIDE).symlink_to(outside / "lj.wav")


def _shown(path: Path) -> str:
    """A path as the manifest names it (bytes that are not UTF-8 escaped)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory) -> Path:
    """One folder of every bad input, speech in odd formats and odd names (jfk.flac is the voice)."""
    root = tmp_path_factory.mktemp("bad") / "in"
    root.mkdir()
    stereo, rate = sf.read(DEMO / "jfk.flac", dtype="float32")
    _write_bad_files(root, stereo[:, 0], rate)
    _write_speech(root, stereo[:, 0], rate)
    _write_odd_entries(root)
    return root


def _run_job(bad_input: Path, output: Path, backend: str = FAKE_ASR) -> dict:
    """{"rows", "rejects", "summary", "output"} of one run; units of a minute of audio: two here,
    one Whisper window each (smaller units cost a window apiece)."""
    # the odd names are byte copies of one clip: keep them all (quality would drop the copies)
    summary = run_job(small_units_config(str(bad_input), str(output), backend, **{
        "engine.unit_minutes": 1.0, "quality.drop_exact_duplicates": False}))
    return {"summary": summary, "output": output, **_tables(output)}


@pytest.fixture(scope="module")
def two_runs(bad_input, local_ray, tmp_path_factory) -> tuple[dict, dict]:
    """The same input into two fresh outputs (the fake ASR backend)."""
    return tuple(_run_job(bad_input, tmp_path_factory.mktemp(name) / "out") for name in ("first", "second"))


@pytest.fixture(scope="module")
def real_run(bad_input, local_ray, tmp_path_factory) -> dict:
    """The same input with the real model: what the odd formats decode to must still be the words."""
    return _run_job(bad_input, tmp_path_factory.mktemp("real") / "out", REAL_ASR)


def _tables(output: Path) -> dict:
    read = lambda folder: ds.dataset(output / folder, format="parquet").to_table().to_pylist()  # noqa: E731
    return {"rows": read("index"), "rejects": read("rejects")}


def _name(uri: str, root: Path) -> str:
    return str(Path(uri).relative_to(root)).removeprefix("names/")


def _shard_members(output: Path) -> dict[str, bytes]:
    members = {}
    for shard in sorted((output / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return members


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def test_every_input_is_a_sample_or_a_reject_and_the_job_completes(two_runs, bad_input):
    run, _ = two_runs
    inputs = {_shown(p) for p in bad_input.rglob("*") if p.is_symlink() or not p.is_dir()}  # links not followed
    seen = {r["source_uri"] for r in run["rows"]} | {r["source_uri"] for r in run["rejects"]}
    assert seen == inputs
    on_disk = json.loads((run["output"] / "summary.json").read_text())
    counts = on_disk["counts"]
    assert on_disk["complete"] and not on_disk["failures"] and counts["units_failed"] == 0
    assert counts["input_files"] == len(inputs) and counts["units"] == counts["units_processed"] > 1
    assert counts["samples"] == len(run["rows"]) and counts["rejects"] == len(run["rejects"])
    assert sum(on_disk["reject_reasons"].values()) == counts["rejects"]


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_bad_file_is_one_reject_with_its_stage_and_reason(two_runs, bad_input, name):
    run, _ = two_runs
    stage, reason = REJECTED[name]
    assert not [r for r in run["rows"] if _name(r["source_uri"], bad_input) == name]
    rejects = [r for r in run["rejects"] if _name(r["source_uri"], bad_input) == name]
    assert [r["stage"] for r in rejects] == [stage], rejects
    assert re.fullmatch(reason, rejects[0]["reason"]), rejects[0]["reason"]
    assert str(bad_input) not in rejects[0]["reason"]  # no path: equal causes count together


def test_reject_reasons_group_equal_causes_in_the_summary(two_runs):
    reasons = two_runs[0]["summary"]["reject_reasons"]
    assert reasons["discover: unreadable header: InvalidDataError: Invalid data found when processing input"] == 2
    assert reasons["vad: no speech found"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_low_rate_8_bit_and_six_channel_speech_is_transcribed(real_run, bad_input, name):
    run = real_run
    rows = [r for r in run["rows"] if _name(r["source_uri"], bad_input) == name]
    text = _norm(" ".join(r["text"] for r in sorted(rows, key=lambda r: r["start"])))
    assert jiwer.wer(JFK, text) < 0.25, text
    assert not [r for r in run["rejects"] if _name(r["source_uri"], bad_input) == name]


def test_six_channels_become_one_mono_channel_of_the_source_audio(two_runs, bad_input):
    run, _ = two_runs
    row = next(r for r in run["rows"] if r["source_uri"].endswith("surround-6ch.wav"))
    audio, rate = sf.read(io.BytesIO(_shard_members(run["output"])[f"{row['key']}.flac"]), dtype="float32")
    assert audio.ndim == 1 and rate == row["sample_rate"] == 24000
    source, src_rate = sf.read(bad_input / "surround-6ch.wav", dtype="float32")
    centre = soxr.resample(source[:, 2], src_rate, rate)[round(row["start"] * rate): round(row["end"] * rate)]
    assert abs(len(audio) - len(centre)) <= 2
    assert np.corrcoef(audio[: len(centre)], centre[: len(audio)])[0, 1] > 0.99


def test_odd_names_give_safe_unique_keys_in_index_and_shards(two_runs, bad_input):
    run, _ = two_runs
    by_name = {_name(r["source_uri"], bad_input): r for r in run["rows"]}
    assert set(NAMES) <= set(by_name) and all(by_name[n]["text"].strip() for n in NAMES)
    keys = [r["key"] for r in run["rows"]]
    assert len(keys) == len(set(keys)) and all(SAFE_KEY.match(k) for k in keys)
    assert all(SAFE_KEY.match(r["key"]) for r in run["rejects"] if r["key"])
    same = {by_name["a/same.wav"]["source_id"], by_name["b/same.wav"]["source_id"]}
    assert len(same) == 2 and all(s.startswith("same-") for s in same)
    members = _shard_members(run["output"])
    assert sorted(members) == sorted(f"{k}.{ext}" for k in keys for ext in ("flac", "json"))


@pytest.mark.slow
def test_a_file_linked_from_outside_the_input_is_transcribed(real_run, bad_input):
    run = real_run
    rows = [r for r in run["rows"] if _name(r["source_uri"], bad_input) == LINKED_FROM_OUTSIDE]
    text = _norm(" ".join(r["text"] for r in rows))
    assert rows and jiwer.wer("eight the press yard", text) <= 0.25, text  # LJ002-0035


def test_two_runs_into_two_outputs_give_the_same_keys_and_rejects(two_runs):
    first, second = two_runs
    assert sorted(r["key"] for r in first["rows"]) == sorted(r["key"] for r in second["rows"])
    outcome = lambda run: sorted((r["source_id"], r["stage"], r["reason"]) for r in run["rejects"])  # noqa: E731
    assert outcome(first) == outcome(second)


def test_a_name_with_a_double_colon_is_read_as_itself(two_runs, bad_input):
    run, _ = two_runs
    assert [r["text"] for r in run["rows"] if _name(r["source_uri"], bad_input) == COLON]


# ----------------------------------------------------------------------------- buckets and credentials

SECRET = f"wrong-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def s3(bad_input):
    """moto's S3 where conftest points s3://, with one readable speech file in `badin-raw/in/`."""
    with moto_s3(skip_instance_cache=True) as fs:
        for bucket in ("badin-raw", "badin-out"):
            fs.mkdir(bucket)
        fs.put_file(str(bad_input / "speech-8k-8bit.wav"), "badin-raw/in/speech.wav")
        yield fs


@pytest.fixture
def moto_auth(s3):
    """Turn on moto's signature checks for one test; returns a real access key id (no policy)."""
    endpoint = f"http://127.0.0.1:{S3_PORT}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    user = iam.create_user(UserName=f"badin-{uuid.uuid4().hex[:8]}")["User"]["UserName"]
    key_id = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield key_id
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def _voxmill_run(monkeypatch, *args: str, key_id: str | None = None) -> tuple[int, str]:
    """`voxmill run ARGS` in this process; (exit code, everything it printed)."""
    if key_id:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep the old credentials
    try:
        result = CliRunner().invoke(app, ["run", *args])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    return result.exit_code, result.output


def _one_clear_line(code: int, printed: str, expected: str) -> None:
    """One error line, `expected` then where the traceback went: `(details: LOG)`."""
    errors = [line for line in printed.splitlines() if re.match(r"^\w+Error: ", line)]
    assert code == 2 and len(errors) == 1 and re.fullmatch(expected + r" \(details: \S+\.log\)", errors[0]), printed
    assert "Traceback" not in printed and SECRET not in printed and "voxmill-test-secret" not in printed


def test_missing_input_or_output_bucket_stops_before_work(s3, bad_input, tmp_path, monkeypatch):
    code, printed = _voxmill_run(monkeypatch, "--input", "s3://no-such-bucket/raw/", "--output", str(tmp_path / "out"))
    _one_clear_line(code, printed, r"InputError: cannot read input s3://no-such-bucket/raw/: no such bucket "
                                   r"\(The specified bucket does not exist\)")
    assert not (tmp_path / "out").exists()
    # --no-plan: the plan would calibrate on the input before anything looks at the output
    code, printed = _voxmill_run(monkeypatch, "--input", str(bad_input / "speech-8k-8bit.wav"),
                                 "--output", "s3://no-such-bucket/out", "--no-plan")
    _one_clear_line(code, printed, r"OutputError: cannot write to output s3://no-such-bucket/out: "
                                   r"FileNotFoundError: The specified bucket does not exist")


def test_wrong_credentials_stop_before_work_without_printing_the_secret(s3, moto_auth, bad_input, monkeypatch,
                                                                      tmp_path):
    local_out = str(tmp_path / "out")  # the output is checked first; a local one lets the input fail
    code, printed = _voxmill_run(monkeypatch, "--input", "s3://badin-raw/in/", "--output", local_out,
                                 key_id=moto_auth)
    _one_clear_line(code, printed, r"InputError: cannot reach input s3://badin-raw/in/: PermissionError: The request "
                                   r"signature we calculated does not match the signature you provided\..*")
    code, printed = _voxmill_run(monkeypatch, "--input", "s3://badin-raw/in/", "--output", local_out,
                                 key_id="AKIAVOXMILLUNKNOWN00")
    _one_clear_line(code, printed, r"InputError: cannot reach input s3://badin-raw/in/: PermissionError: The AWS "
                                   r"Access Key Id you provided does not exist in our records\.")
    code, printed = _voxmill_run(monkeypatch, "--input", str(bad_input / "speech-8k-8bit.wav"),
                                 "--output", "s3://badin-out/x", "--no-plan", key_id=moto_auth)
    _one_clear_line(code, printed, r"OutputError: cannot write to output s3://badin-out/x: PermissionError: "
                                   r"The request signature we calculated does not match.*")


def test_an_input_without_one_readable_file_is_refused_in_one_line(bad_input, tmp_path, monkeypatch):
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for name in ("empty.wav", "random-bytes.wav", "notes.mp3"):
        shutil.copy(bad_input / name, only_bad / name)
    code, printed = _voxmill_run(monkeypatch, "--input", str(only_bad), "--output", str(tmp_path / "out"))
    _one_clear_line(code, printed, rf"InputError: no readable audio in {re.escape(str(only_bad))}")
