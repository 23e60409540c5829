"""Filter audit (issue 16): the share of clean speech each default quality filter keeps, and the share
of bad audio it drops.

Inputs (built under `--work`, never written next to the originals):
- good speech: the real clips of /work/shared/corpora/real-speech (LibriSpeech, LJ Speech, AMI, Common
  Voice, JFK) and clear espeak-ng speech of known text (several voices, variants and speeds; single
  sentences short enough to share ASR windows, and files of 2-3 sentences with pauses);
- bad audio: copies of those under white and pink noise (20/10/5/0 dB SNR against the active speech
  level), hard-clipped copies (at 10% and 30% of the peak, turned back up to full scale), near-silent
  copies (peak at -60 dBFS), and no speech at all: music-like tones and chords, a hummed melody
  (voice-like, no words), the corpus's test tones, white/pink noise alone.

Each group of files runs through the real stages as one work unit: `Preparer` (decode, resample, VAD,
acoustic scores), the real `Transcriber` with the bundled tiny.en model (packing on, as in a job),
then the commit's index row and `pipelines.metrics.filters.verdict` with the default `QualityConfig`. Per
filter, a segment counts as dropped when that filter alone (the others off) drops it. The old rule
(before issue 16: every segment of a packed window got the window's `no_speech_prob`, and a segment
was dropped when it was > 0.6 whatever its avg_logprob) is evaluated on the same run: the window's
value is recorded beside each packed segment's result.

CLI: ``.venv/bin/python benchmarks/filters.py [--work DIR] [--json out.json] [--quick] [--corpus DIR]``
(``--corpus``: also audit a folder of clean speech with a make_corpus.py references.jsonl;
``--rows out.json``: print the tables of an earlier run; ``--only GROUP ...``: measure those groups.)
About 3.5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.asr.whisper import Transcriber  # noqa: E402
from pipelines.metrics.filters import verdict  # noqa: E402
from pipelines.records import SourceFile
from pipelines.stages.commit import UnitCommitter  # noqa: E402
from pipelines.stages.discover import Discover  # noqa: E402
from pipelines.stages.prepare import Preparer  # noqa: E402
from schemas.config import QualityConfig, load_job_config  # noqa: E402

REAL = Path("/work/shared/corpora/real-speech")
RATE = 22050  # espeak-ng's output rate; the synthetic inputs are written at it
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "She sells sea shells by the sea shore.",
    "We will meet at the station at half past nine tomorrow morning.",
    "The weather was cold and grey for most of the week.",
    "My brother planted a small garden behind the old house.",
    "Every evening the children read a story before they go to sleep.",
    "The library closes early on Sundays during the summer.",
    "A large ship sailed slowly into the harbour at dawn.",
    "He forgot his umbrella on the train again.",
    "The meeting has been moved to the second floor.",
    "Turn left at the bakery and walk two blocks north.",
    "Our teacher told us to read the first three chapters.",
    "The coffee in this little cafe is surprisingly good.",
    "They painted the kitchen a bright shade of yellow.",
    "Nobody knew where the old map had come from.",
    "The train to the city leaves every twenty minutes.",
    "Remember to water the plants while I am away.",
    "The museum opens a new exhibition next month.",
    "Heavy rain flooded the roads near the river.",
    "I would like a cup of tea with a little milk.",
    "The doctor said he should rest for a few days.",
    "A flock of birds flew over the quiet field.",
    "We watched the sun go down behind the hills.",
)
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us+f2", "en-gb+f4", "en-us+m3",
          "en-gb-x-gbclan", "en+f3", "en-us-nyc", "en-gb-x-gbcwmd")
SPEEDS = (135, 150, 160, 175, 190)
NOISE_SNRS = (20, 10, 5, 0)
CLIP_LEVELS = (0.1, 0.3)  # hard clip at this share of the peak, then back up to 0.99 full scale
SILENT_DBFS = -60.0


@dataclass(frozen=True)
class Group:
    name: str
    good: bool  # clean speech (share kept matters) or bad audio (share dropped matters)
    what: str


# ----------------------------------------------------------------------------- inputs


def espeak(text: str, voice: str, speed: int, path: Path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-w", str(path), "-v", voice, "-s", str(speed), text], check=True,
                   capture_output=True)
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE, rate
    return audio


def active_power(audio: np.ndarray, rate: int) -> float:
    """Mean power of the 25 ms frames within 40 dB of the loudest: the speech level, not the pauses."""
    frame = int(0.025 * rate)
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame).astype(np.float64)
    power = (frames**2).mean(axis=1)
    return float(power[power >= power.max() * 1e-4].mean())


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return noise / noise.std()


def music(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """Chords and arpeggios of harmonic tones with attack/decay envelopes: music-like, no speech."""
    out = np.zeros(int(seconds * rate))
    t = 0.0
    while t < seconds - 0.3:
        length = float(rng.uniform(0.3, 1.2))
        root = 110 * 2 ** (rng.integers(0, 24) / 12)
        chord = [root * 2 ** (s / 12) for s in (0, 4, 7, 12)[: rng.integers(1, 5)]]
        n = int(min(length, seconds - t) * rate)
        time_ = np.arange(n) / rate
        envelope = np.minimum(1, time_ / 0.02) * np.exp(-time_ * rng.uniform(1, 4))
        note = sum(sum(np.sin(2 * np.pi * f * h * time_) / h ** 1.5 for h in range(1, 6)) for f in chord)
        start = int(t * rate)
        out[start : start + n] += envelope * note
        t += length
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def hum(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """A hummed/sung melody: a glottal-like sawtooth with vibrato through vowel formants. Voice-like
    enough for the VAD to pass parts of it, but no words."""
    from scipy.signal import lfilter

    n = int(seconds * rate)
    t = np.arange(n) / rate
    notes = np.repeat(rng.choice([196, 220, 247, 262, 294, 330], size=int(seconds / 0.5) + 1), int(0.5 * rate))[:n]
    phase = np.cumsum(notes * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))) / rate
    source = 2 * (phase % 1) - 1
    out = np.zeros(n)
    step = int(1.5 * rate)
    for i in range(0, n, step):
        for f in ((700, 1200, 2600), (300, 2300, 3000), (500, 900, 2500))[(i // step) % 3]:
            r, theta = np.exp(-np.pi * 100 / rate), 2 * np.pi * f / rate
            out[i : i + step] += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source[i : i + step])
    out *= np.minimum(1, t / 0.05) * np.minimum(1, (seconds - t) / 0.05)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def build_inputs(work: Path, quick: bool) -> dict[str, list]:
    """Writes every group's files under work/<group>/; returns the reference texts by
    "group/file": a list of [start, end, text] (times None: the whole file's text)."""
    rng = np.random.default_rng(16)
    refs = [json.loads(line) for line in (REAL / "references.jsonl").read_text().splitlines() if line.strip()]
    real_names = [r["file"] for r in refs if not r["corpus"].startswith("none")]
    tones = [r["file"] for r in refs if r["corpus"].startswith("none")]
    texts: dict[str, list] = {f"real/{r['file']}": [[None, None, r["text"]]] for r in refs if r["text"]}
    groups: dict[str, list[Path]] = {}

    def put(group: str, name: str, audio: np.ndarray, rate: int) -> None:
        folder = work / group
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, np.clip(audio, -1, 1), rate, subtype="FLOAT")
        groups.setdefault(group, []).append(folder / name)

    for group, names in (("real", real_names), ("tones", tones)):
        (work / group).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(REAL / name, work / group / name)
        groups[group] = [work / group / n for n in names]

    with tempfile.TemporaryDirectory(prefix="voxmill-espeak-") as tmp:
        for i in range(8 if quick else 72):
            voice, speed = VOICES[i % len(VOICES)], SPEEDS[i % len(SPEEDS)]
            count = 1 if i % 3 else 3  # every third file: three sentences with pauses
            parts, spans, at = [np.zeros(int(0.3 * RATE), dtype=np.float32)], [], 0.3
            for k in range(count):
                text = SENTENCES[(i * 3 + k) % len(SENTENCES)]
                speech = espeak(text, voice, speed, Path(tmp) / f"{i}-{k}.wav")
                pause = np.zeros(int(rng.uniform(0.8, 1.5) * RATE), dtype=np.float32)
                spans.append([at, at + len(speech) / RATE, text])
                parts += [speech, pause]
                at += (len(speech) + len(pause)) / RATE
            audio = np.concatenate(parts)
            name = f"espeak-{i:02d}-{voice.replace('+', '_')}-s{speed}.wav"
            put("espeak", name, 0.9 * audio / np.abs(audio).max(), RATE)
            texts[f"espeak/{name}"] = spans

    # degraded copies of the real clips and of the first 18 espeak files
    sources = groups["real"] + groups["espeak"][:18]
    if quick:
        sources = groups["real"][::2] + groups["espeak"][::2]
    for source in sources:
        audio, rate = sf.read(source, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        level = active_power(audio, rate)
        stem = f"{source.parent.name}-{source.stem}"
        copies = {}
        for kind in ("white", "pink"):
            for snr in NOISE_SNRS:
                noise = rng.normal(size=len(audio)) if kind == "white" else pink(rng, len(audio))
                noisy = audio + noise * math.sqrt(level / 10 ** (snr / 10))
                copies[f"{kind}-{snr}dB"] = noisy * min(1.0, 0.99 / np.abs(noisy).max())
        peak = float(np.abs(audio).max())
        for share in CLIP_LEVELS:
            clipped = np.clip(audio, -share * peak, share * peak)
            copies[f"clipped-{round(share * 100)}pct"] = clipped * (0.99 / (share * peak))
        copies["near-silent"] = audio * (10 ** (SILENT_DBFS / 20) / peak)
        for group, copy in copies.items():
            put(group, f"{stem}.wav", copy, rate)
            if f"{source.parent.name}/{source.name}" in texts:
                texts[f"{group}/{stem}.wav"] = texts[f"{source.parent.name}/{source.name}"]
    for i in range(4 if quick else 8):
        put("music", f"music-{i}.wav", music(rng, float(rng.uniform(5, 12)), RATE), RATE)
    for i in range(4 if quick else 8):
        put("hummed", f"hum-{i}.wav", hum(rng, float(rng.uniform(5, 10)), 16000), 16000)
    for i in range(2 if quick else 4):
        noise = rng.normal(size=6 * RATE) if i % 2 == 0 else pink(rng, 6 * RATE)
        put("noise-only", f"noise-{i}.wav", 0.1 * noise / noise.std(), RATE)
    return texts


def corpus_texts(corpus: Path) -> dict[str, list]:
    """References of a make_corpus.py corpus, keyed as build_inputs keys them."""
    texts = {}
    for line in (corpus / "references.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("segments"):
            texts[f"corpus/{row['file']}"] = [[s["start"], s["end"], s["text"]] for s in row["segments"]]
        elif row.get("text"):
            texts[f"corpus/{row['file']}"] = [[None, None, row["text"]]]
    return texts


def reference(spans: Optional[list], start: float, end: float, alone: bool) -> Optional[str]:
    """The reference text of a VAD segment: the utterances whose middle falls in it (a whole-file
    text only when the file gave one segment)."""
    if not spans:
        return None
    if spans[0][0] is None:
        return spans[0][2] if alone else None
    inside = [text for s, e, text in spans if start - 0.1 <= (s + e) / 2 <= end + 0.1]
    return " ".join(inside) or None


GROUPS = (
    Group("real", True, "real clips (LibriSpeech, LJ Speech, AMI, Common Voice, JFK)"),
    Group("espeak", True, "espeak-ng, clear, several voices and speeds"),
    Group("corpus", True, "--corpus: e.g. make_corpus.py --shape short (real clips + espeak-ng)"),
    *(Group(f"{kind}-{snr}dB", False, f"{kind} noise at {snr} dB SNR") for kind in ("white", "pink")
      for snr in NOISE_SNRS),
    *(Group(f"clipped-{round(s * 100)}pct", False, f"hard-clipped at {round(s * 100)}% of the peak")
      for s in CLIP_LEVELS),
    Group("near-silent", False, f"peak at {SILENT_DBFS:g} dBFS"),
    Group("music", False, "music-like tones and chords, no speech"),
    Group("hummed", False, "a hummed melody through vowel formants: voice-like, no words"),
    Group("tones", False, "the corpus's 1 s test tones, no speech"),
    Group("noise-only", False, "white/pink noise, no speech"),
)


# ----------------------------------------------------------------------------- measure


class AuditTranscriber(Transcriber):
    """The real Transcriber; also records each packed segment's window `no_speech_prob` (what the
    old rule gave every segment of the window) so the old rule can be scored on the same run."""

    def __init__(self, config):
        super().__init__(config)
        self.window_no_speech: dict[int, float] = {}
        self._outputs: list = []

    def __call__(self, audios, journal=None):
        self.window_no_speech = {}
        return super().__call__(audios, journal)

    def _generate(self, audios):
        got = super()._generate(audios)
        self._outputs = got[1]
        return got

    def _decode_packed(self, batch, audios):
        resolved, unresolved = super()._decode_packed(batch, audios)
        for window, output in zip(batch, self._outputs):
            for place in window.placed:
                if place.index in resolved:
                    self.window_no_speech[place.index] = float(output.no_speech_prob)
        return resolved, unresolved


def measure(work: Path, groups: list[str], texts: dict[str, list]) -> list[dict]:
    """Index rows (with the scores the filters read) of every segment, by group."""
    config = load_job_config(str(work), "/tmp/voxmill-unused")
    preparer = Preparer(config)
    preparer.setup()
    transcriber = AuditTranscriber(config.asr)
    transcriber.setup()
    committer = UnitCommitter(config)
    rows = []
    for unit, group in enumerate(groups):
        folder = work / group
        manifest = Discover(config.discover)(str(folder)).to_pylist()
        files = [SourceFile(r["id"], r["uri"], r["duration"], r["error"]) for r in manifest]
        started = time.perf_counter()
        audios, prepared = preparer(unit, files)
        results = transcriber(audios) if audios else []
        per_file = {}
        for seg in prepared.segments:
            per_file[seg.source_uri] = per_file.get(seg.source_uri, 0) + 1
        for i, (seg, res) in enumerate(zip(prepared.segments, results, strict=True)):
            row = committer._index_row(unit, seg, res)
            row = {k: v for k, v in row.items() if k not in ("unit", "source_id", "audio_hash", "near_duplicate_of")}
            row["group"] = group
            row["file"] = Path(seg.source_uri).name
            row["packed"] = i in transcriber.window_no_speech
            row["old_no_speech_prob"] = transcriber.window_no_speech.get(i, res.extras.get("no_speech_prob"))
            relative = Path(seg.source_uri).relative_to(work).as_posix()
            row["reference"] = reference(texts.get(relative), seg.start, seg.end, per_file[seg.source_uri] == 1)
            rows.append(row)
        seconds = sum(f.duration or 0.0 for f in files)
        print(f"{group}: {len(files)} files, {seconds:.0f} s, {len(prepared.segments)} segments, "
              f"{len(prepared.rejects)} file/segment rejects before ASR, {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        rows.append({"group": group, "_files": len(files), "_seconds": seconds,
                     "_segments": len(prepared.segments), "_prep_rejects": len(prepared.rejects)})
    return rows


# ----------------------------------------------------------------------------- evaluate


def _only(**fields) -> QualityConfig:
    """A QualityConfig with every threshold off except `fields`."""
    off = {name: None for name, info in QualityConfig.model_fields.items()
           if name.startswith(("min_", "max_")) and info.annotation is not bool}
    return QualityConfig(**{**off, **fields})


DEFAULTS = QualityConfig()


def _drops(config: QualityConfig, metric: str) -> Callable[[dict], bool]:
    def check(row: dict) -> bool:
        failed = verdict(config, row)
        return failed is not None and failed.metric == metric
    return check


def _old_no_speech(row: dict) -> bool:
    value = row["old_no_speech_prob"]
    return value is not None and value > 0.6


FILTERS: dict[str, Callable[[dict], bool]] = {
    "dnsmos_ovrl>=2": _drops(_only(min_dnsmos_ovrl=DEFAULTS.min_dnsmos_ovrl), "dnsmos_ovrl"),
    "snr_db>=15": _drops(_only(min_snr_db=DEFAULTS.min_snr_db), "snr_db"),
    "clipping<=0.001": _drops(_only(max_clipping=DEFAULTS.max_clipping), "clipping"),
    "loudness": _drops(_only(min_loudness_lufs=DEFAULTS.min_loudness_lufs,
                             max_loudness_lufs=DEFAULTS.max_loudness_lufs), "loudness_lufs"),
    "chars/s 2-30": _drops(_only(min_chars_per_second=DEFAULTS.min_chars_per_second,
                                 max_chars_per_second=DEFAULTS.max_chars_per_second), "chars_per_second"),
    "avg_logprob>=-1": _drops(_only(min_avg_logprob=DEFAULTS.min_avg_logprob), "avg_logprob"),
    "no_speech (new)": _drops(_only(max_no_speech_prob=DEFAULTS.max_no_speech_prob,
                                    min_avg_logprob=DEFAULTS.min_avg_logprob), "no_speech_prob"),
    "no_speech (old)": _old_no_speech,
    "empty text": lambda row: not row["text"],
    "ALL (new)": lambda row: not row["text"] or verdict(DEFAULTS, row) is not None,
    "ALL (old)": lambda row: not row["text"] or verdict(DEFAULTS, _before(row)) is not None or _old_no_speech(row),
}


def _before(row: dict) -> dict:
    """The row as the code before issue 16 scored it: audio under BS.1770's -70 LUFS absolute gate
    had no loudness (so the loudness floor never saw it)."""
    loudness = row["loudness_lufs"]
    return {**row, "loudness_lufs": None if loudness is not None and loudness <= -70 else loudness}


def wer(rows: list[dict]) -> Optional[float]:
    """Word error rate over the rows that have a reference (normalised text, digits as written)."""
    import jiwer

    from pipelines.metrics.text import normalise_text

    pairs = [(normalise_text(r["reference"]), normalise_text(r["text"]) or "-") for r in rows if r.get("reference")]
    if not pairs:
        return None
    return jiwer.wer([a for a, _ in pairs], [b for _, b in pairs])


def evaluate(rows: list[dict], groups: list[str]) -> dict[str, dict]:
    """Per group: counts, and per filter the share of segments it drops (alone)."""
    table = {}
    for group in groups:
        segments = [r for r in rows if r["group"] == group and "key" in r]
        (meta,) = [r for r in rows if r["group"] == group and "_files" in r]
        entry = {"files": meta["_files"], "input_seconds": round(meta["_seconds"], 1), "segments": len(segments),
                 "packed": sum(r["packed"] for r in segments),
                 "speech_seconds": round(sum(r["duration"] for r in segments), 1)}
        entry["prep_rejects"] = meta["_prep_rejects"]  # rows rejected before ASR: mostly files with no speech (VAD)
        for name, dropped in FILTERS.items():
            entry[name] = (sum(map(dropped, segments)) / len(segments)) if segments else None
        kept = [r for r in segments if not FILTERS["ALL (new)"](r)]
        gone = [r for r in segments if FILTERS["ALL (new)"](r)]
        entry["wer_kept"], entry["wer_dropped"] = wer(kept), wer(gone)
        entry["with_reference"] = sum(bool(r.get("reference")) for r in segments)
        table[group] = entry
    return table


def render(table: dict[str, dict]) -> str:
    names = list(FILTERS)
    lines = []
    for good in (True, False):
        groups = [g for g in GROUPS if g.good == good and g.name in table]
        title = "Clean speech: share of segments KEPT" if good else "Bad audio: share of segments DROPPED"
        lines += ["", f"**{title}** (each filter alone; ALL = every default filter; old = before issue 16)", ""]
        lines.append("| group | files (prep rejects) | segments (packed) | " + " | ".join(names)
                     + " | WER kept / dropped |")
        lines.append("|---" * (len(names) + 4) + "|")
        for group in groups:
            entry = table[group.name]
            cells = []
            for name in names:
                share = entry[name]
                cells.append("-" if share is None else f"{100 * ((1 - share) if good else share):.0f}%")
            rates = "/".join("-" if entry[k] is None else f"{entry[k]:.2f}" for k in ("wer_kept", "wer_dropped"))
            lines.append(f"| {group.name} | {entry['files']} ({entry['prep_rejects']}) | "
                         f"{entry['segments']} ({entry['packed']}) | " + " | ".join(cells) + f" | {rates} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for the generated inputs (default: a temporary one)")
    parser.add_argument("--json", help="write the per-group table and every segment's scores here")
    parser.add_argument("--quick", action="store_true", help="fewer espeak files and degraded sources")
    parser.add_argument("--rows", help="evaluate the rows of an earlier --json instead of measuring")
    parser.add_argument("--corpus", help="also audit this folder of clean speech (e.g. a make_corpus.py "
                                         "--shape short corpus) as the group `corpus`")
    parser.add_argument("--only", nargs="+", help="measure only these groups")
    args = parser.parse_args()
    groups = [g.name for g in GROUPS]
    if args.rows:
        rows = json.loads(Path(args.rows).read_text())["rows"]
        groups = sorted({r["group"] for r in rows}, key=[g.name for g in GROUPS].index)
    else:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="voxmill-filters-"))
        texts = build_inputs(work, args.quick)
        if args.corpus:
            shutil.copytree(args.corpus, work / "corpus", dirs_exist_ok=True)
            texts.update(corpus_texts(Path(args.corpus)))
        else:
            groups.remove("corpus")
        if args.only:
            groups = [g for g in groups if g in args.only]
        rows = measure(work, groups, texts)
    table = evaluate(rows, groups)
    print(render(table))
    dropped_good = [r for r in rows if "key" in r and r["group"] in ("real", "espeak", "corpus")
                    and FILTERS["ALL (new)"](r)]
    for r in dropped_good:
        failed = verdict(DEFAULTS, r)
        print(f"clean speech dropped: {r['group']}/{r['file']} {r['start']:.2f}-{r['end']:.2f}: "
              f"{failed.reason if failed else 'empty transcript'}; text {r['text'][:80]!r}; "
              f"reference {(r.get('reference') or '')[:80]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
