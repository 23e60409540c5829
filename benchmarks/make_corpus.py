"""Build deterministic speech corpora for voxmill benchmarks.

Speech comes from the real clips in ``/work/shared/corpora/real-speech`` (copied, never
written to) and from espeak-ng synthesis of a seeded pool of English sentences. Three
shapes stress different parts of the pipeline:

* ``short``: many 1-15 s clips, 16 kHz mono FLAC/WAV, a few real clips.
* ``long``: 3-10 min recordings of utterances separated by short and long silences.
* ``mixed``: every rate, mono/stereo, flac/wav/mp3/opus/ogg/m4a, 1 s to 2 min clips,
  plus the real clips and the no-speech test tones as they are.

``OUT_DIR/references.jsonl`` holds one line per audio file: ``file`` (relative path),
``text`` (full reference or null), ``duration`` (measured from the written file),
``speech_seconds`` and ``segments`` (``start``/``end``/``text`` of each utterance).

CLI: ``python benchmarks/make_corpus.py OUT_DIR --shape mixed --minutes 30 [--seed 0]``
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf
import soxr

SHAPES = ("short", "long", "mixed")
REAL_DIR = Path("/work/shared/corpora/real-speech")
SYNTH_RATE = 22050  # espeak-ng's native output rate; timelines are built at this rate
WORKERS = max(2, min(4, (os.cpu_count() or 2) * 2))
NO_SPEECH_MARK = "no speech"  # substring of the corpus field of the real test tones

VOICES = ("en", "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
          "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("", "", "+f2", "+f3", "+f4", "+m3", "+m5")

DETS = ("the", "a", "every", "one", "that", "my", "our", "her", "his", "their", "this")
ADJS = ("old", "small", "big", "red", "green", "quiet", "bright", "heavy", "young", "warm",
        "cold", "happy", "tired", "clean", "empty", "busy", "strange", "simple", "long",
        "short", "new", "dark", "soft", "broken", "little", "famous", "wooden", "careful")
NOUNS = ("man", "woman", "child", "teacher", "doctor", "farmer", "dog", "cat", "horse",
         "bird", "house", "garden", "river", "road", "city", "village", "window", "door",
         "table", "book", "letter", "box", "car", "train", "boat", "market", "school",
         "kitchen", "bridge", "tree", "flower", "basket", "coat", "shop", "story", "song",
         "picture", "friend", "neighbour", "student", "station", "office", "lamp", "key")
VERBS = ("found", "opened", "carried", "painted", "watched", "moved", "cleaned", "followed",
         "bought", "sold", "built", "fixed", "visited", "heard", "saw", "wanted", "needed",
         "lost", "left", "took", "brought", "made", "kept", "read", "wrote", "closed",
         "dropped", "liked", "remembered", "showed", "washed", "pulled", "pushed")
PREPS = ("near", "behind", "under", "beside", "across", "inside", "after", "before",
         "around", "with", "from", "over")
ADVS = ("slowly", "quickly", "quietly", "again", "today", "yesterday", "early", "late",
        "carefully", "together", "later", "once", "twice", "at last", "every morning")
CONJS = ("and", "but", "because", "while", "so", "before", "after", "when")

FIXED_SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The quick brown fox jumps over the lazy dog.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The meeting will start at nine o'clock on Monday morning in the main hall.",
    "Please remember to bring your tickets and a warm coat for the evening walk.",
    "She counted twenty seven boats in the harbour before the sun went down.",
    "We should check the weather report before we leave for the mountains tomorrow.",
)
SHORT_PHRASES = (
    "Yes.", "No.", "Okay.", "Thank you.", "Good morning.", "Hello there.", "Of course.",
    "I see.", "Not really.", "Can you hear me?", "Let's begin.", "Sounds good to me.",
    "Wait a moment.", "See you tomorrow.",
)


# ----------------------------------------------------------------------------- pool


@dataclass(frozen=True)
class Utterance:
    """One trimmed, peak-normalised utterance at SYNTH_RATE."""

    text: Optional[str]
    voice: str
    audio: np.ndarray = field(repr=False)
    short: bool = False

    @property
    def seconds(self) -> float:
        return len(self.audio) / SYNTH_RATE


@dataclass(frozen=True)
class Speaker:
    """An espeak-ng voice setting shared by several pool items."""

    voice: str
    pitch: int
    speed: int


def _clause(rng: random.Random) -> list[str]:
    """One 'det adj? noun verb det adj? noun [prep det noun] [adverb]' clause."""
    words = [rng.choice(DETS)] + ([rng.choice(ADJS)] if rng.random() < 0.5 else [])
    words += [rng.choice(NOUNS), rng.choice(VERBS), rng.choice(DETS)]
    words += ([rng.choice(ADJS)] if rng.random() < 0.5 else []) + [rng.choice(NOUNS)]
    if rng.random() < 0.5:
        words += [rng.choice(PREPS), rng.choice(DETS), rng.choice(NOUNS)]
    if rng.random() < 0.4:
        words += rng.choice(ADVS).split()
    return words


def make_sentence(rng: random.Random) -> str:
    """A random sentence of 8-20 common words."""
    target = rng.randint(8, 20)
    while True:
        words = _clause(rng)
        while len(words) < target:
            words += [rng.choice(CONJS)] + _clause(rng)
        if 8 <= len(words) <= 20:
            text = " ".join(words)
            return text[0].upper() + text[1:] + "."


def _trim(x: np.ndarray, rate: int, rel_db: float = -40.0, margin: float = 0.03) -> np.ndarray:
    """Cut leading/trailing samples quieter than rel_db below the peak."""
    env = np.abs(x)
    loud = np.flatnonzero(env > env.max() * 10 ** (rel_db / 20)) if env.size else env
    if loud.size == 0:
        return x
    pad = int(margin * rate)
    return x[max(0, loud[0] - pad): loud[-1] + pad + 1]


def _synth(text: str, spk: Speaker, speed: int, path: Path) -> np.ndarray:
    """Run espeak-ng once; return the trimmed, peak-normalised waveform."""
    cmd = ["espeak-ng", "-w", str(path), "-s", str(speed), "-p", str(spk.pitch),
           "-v", spk.voice, text]
    subprocess.run(cmd, check=True, capture_output=True)
    x, rate = sf.read(path, dtype="float32")
    assert rate == SYNTH_RATE, rate
    x = _trim(x, rate)
    return x / max(float(np.abs(x).max()), 1e-6)


def make_speakers(rng: random.Random, n: int = 12) -> list[Speaker]:
    """n distinct voice/variant/pitch/speed combinations."""
    combos = [(v, var) for v in VOICES for var in VARIANTS]
    rng.shuffle(combos)
    return [Speaker(v + var, rng.randint(35, 65), rng.randint(140, 185))
            for v, var in combos[:n]]


def build_pool(rng: random.Random, n_sentences: int,
               speakers: list[Speaker]) -> list[Utterance]:
    """Synthesise fixed sentences, short phrases and n_sentences random ones."""
    texts = [(t, False) for t in FIXED_SENTENCES] + [(t, True) for t in SHORT_PHRASES]
    texts += [(make_sentence(rng), False) for _ in range(n_sentences)]
    jobs = [(t, short, speakers[i % len(speakers)]) for i, (t, short) in enumerate(texts)]
    speeds = [max(110, min(220, s.speed + rng.randint(-20, 20))) for _, _, s in jobs]
    with tempfile.TemporaryDirectory(prefix="voxmill-espeak-") as tmp, \
            ThreadPoolExecutor(WORKERS) as ex:
        waves = ex.map(lambda i: _synth(jobs[i][0], jobs[i][2], speeds[i],
                                        Path(tmp) / f"{i}.wav"), range(len(jobs)))
        return [Utterance(t, f"{s.voice} p{s.pitch} s{sp}", w, short)
                for (t, short, s), sp, w in zip(jobs, speeds, waves)]


# ----------------------------------------------------------------------------- real clips


def real_refs() -> list[dict]:
    """The rows of the shared real-speech references.jsonl."""
    lines = (REAL_DIR / "references.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _is_tone(ref: dict) -> bool:
    return NO_SPEECH_MARK in ref.get("corpus", "")


def _read_mono(path: Path, rate: int) -> np.ndarray:
    """Decode any real clip to float32 mono at rate."""
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return soxr.resample(x, sr, rate).astype(np.float32) if sr != rate else x


def real_utterances(refs: list[dict]) -> list[Utterance]:
    """Real clips with a known single transcript, as pool items for splicing."""
    out = []
    for r in refs:
        if r.get("text") and not r.get("segments") and not _is_tone(r):
            x = _trim(_read_mono(REAL_DIR / r["file"], SYNTH_RATE), SYNTH_RATE)
            out.append(Utterance(r["text"], f"real:{r['corpus']}",
                                 x / max(float(np.abs(x).max()), 1e-6)))
    return out


def _real_speech_seconds(ref: dict, duration: float) -> float:
    if _is_tone(ref):
        return 0.0
    segs = ref.get("segments")
    return sum(s["end"] - s["start"] for s in segs) if segs else duration


# ----------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """One synthetic output file: utterances placed on a timeline plus rendering options."""

    rel: str
    rate: int
    fmt: str
    length: float
    pieces: list[tuple[float, Utterance, float]]  # (start s, utterance, gain)
    seed: int
    channels: int = 1
    stereo: str = "dup"  # dup | pan | left
    noise_db: Optional[float] = None


@dataclass
class RealPlan:
    """One real clip, copied as is (fmt None) or converted to rate/fmt mono."""

    rel: str
    ref: dict
    rate: Optional[int] = None
    fmt: Optional[str] = None
    channels: int = 1


def _fill(rng: random.Random, pick: Callable[[], Utterance], start: float, limit: float,
          gap: Callable[[], float], max_utts: int = 10_000) -> tuple[list, float]:
    """Place utterances from start while they end before limit; return pieces and end."""
    pieces, t = [], start
    while len(pieces) < max_utts:
        u = pick()
        if t + u.seconds > limit and pieces:
            break
        pieces.append((t, u, 10 ** (rng.uniform(-3, 3) / 20)))
        t += u.seconds + gap()
    return pieces, pieces[-1][0] + pieces[-1][1].seconds


def _noise(rng: random.Random) -> Optional[float]:
    return None if rng.random() < 0.25 else rng.uniform(-75, -55)


class Planner:
    """Seeded generator of synthetic file plans for one shape."""

    def __init__(self, shape: str, pool: list[Utterance], rng: random.Random,
                 real: list[Utterance]) -> None:
        self.shape, self.rng, self.real = shape, rng, real
        self.sentences = [u for u in pool if not u.short]
        self.phrases = [u for u in pool if u.short]
        self.by_voice: dict[str, list[Utterance]] = {}
        for u in self.sentences:
            self.by_voice.setdefault(u.voice.split(" p")[0], []).append(u)
        self.count = 0

    def next(self, remaining: float) -> Plan:
        """The next plan; remaining (seconds still needed) sizes long recordings."""
        self.count += 1
        return getattr(self, f"_{self.shape}")(remaining)

    def _pick(self, phrase_p: float = 0.0) -> Utterance:
        src = self.phrases if self.rng.random() < phrase_p else self.sentences
        return self.rng.choice(src)

    def _folder(self, names: tuple[str, ...]) -> str:
        return self.rng.choice(names)

    def _short(self, remaining: float) -> Plan:
        r = self.rng
        n = r.choices((1, 2, 3), (0.8, 0.15, 0.05))[0]
        lead = r.uniform(0.05, 1.0)
        pieces, end = _fill(r, lambda: self._pick(0.12), lead, 14.0,
                            lambda: r.uniform(0.2, 1.0), n)
        fmt = r.choice(("flac", "flac", "flac", "wav", "wav"))
        rel = f"{self._folder(('a', 'b', 'b/c', 'd/e/f'))}/short-{self.count:05d}.{fmt}"
        length = max(1.0, min(15.0, end + r.uniform(0.05, 1.0)))
        return Plan(rel, 16000, fmt, length, pieces, r.randrange(2**32), noise_db=_noise(r))

    def _long_length(self, remaining: float) -> float:
        n = self.rng.uniform(180, 600)
        if remaining <= 600:
            return max(remaining + 0.5, 30.0)
        return remaining - 180 if remaining - n < 180 else n

    def _long(self, remaining: float) -> Plan:
        r = self.rng
        length = self._long_length(remaining)
        voices = r.sample(sorted(self.by_voice), r.randint(1, 3))
        spliced = lambda: r.choice(self.real) if self.real and r.random() < 0.03 else None
        pick = lambda: spliced() or r.choice(self.by_voice[r.choice(voices)])
        gap = lambda: r.uniform(5, 20) if r.random() < 0.07 else r.uniform(0.3, 3.0)
        pieces, _ = _fill(r, pick, r.uniform(0.5, 3.0), length - r.uniform(0.5, 5.0), gap)
        rate, fmt = r.choice((16000, 44100)), r.choice(("flac", "wav"))
        rel = f"{self._folder(('rec', 'rec/day1', 'rec/day2'))}/long-{self.count:03d}.{fmt}"
        return Plan(rel, rate, fmt, length, pieces, r.randrange(2**32), noise_db=_noise(r))

    def _mixed(self, remaining: float) -> Plan:
        r = self.rng
        kind = r.choices(("clip", "medium", "long", "silence"), (0.6, 0.27, 0.1, 0.03))[0]
        target = {"clip": 15.0, "medium": r.uniform(15, 60), "long": r.uniform(60, 120),
                  "silence": r.uniform(1, 10)}[kind]
        lead = r.uniform(0.05, 1.5)
        if kind == "silence":
            pieces, end = [], target
        else:
            n = 1 if kind == "clip" and r.random() < 0.8 else 10_000
            pieces, end = _fill(r, lambda: self._pick(0.1), lead, target - 0.5,
                                lambda: r.uniform(0.3, 2.5), n)
        length = max(1.0, min(120.0, end + r.uniform(0.05, 1.5)))
        fmt = r.choices(("flac", "wav", "mp3", "opus", "ogg", "m4a"),
                        (0.22, 0.22, 0.2, 0.14, 0.07, 0.15))[0]
        rate = r.choice((8000, 16000, 22050, 44100, 48000))
        channels = 2 if r.random() < 0.35 else 1
        stereo = r.choices(("dup", "pan", "left"), (0.5, 0.35, 0.15))[0]
        rel = f"{self._folder(('a', 'a/x', 'b', 'c/y/z'))}/mixed-{self.count:05d}.{fmt}"
        noise = _noise(r) if pieces else r.uniform(-70, -40)
        return Plan(rel, rate, fmt, length, pieces, r.randrange(2**32), channels, stereo, noise)


def real_plans(shape: str, refs: list[dict], rng: random.Random) -> list[RealPlan]:
    """Which real clips go into a shape, and how."""
    speech = [r for r in refs if not _is_tone(r)]
    if shape == "short":
        fmts = ["wav" if r["file"].endswith(".wav") else "flac" for r in speech]
        return [RealPlan(f"real/{Path(r['file']).stem}.{f}", r, 16000, f)
                for r, f in zip(speech, fmts)]
    if shape == "long":
        return []
    plans = [RealPlan(f"real/orig/{r['file']}", r) for r in refs]
    for r in speech:
        fmt = rng.choice(("flac", "wav", "mp3", "opus", "ogg", "m4a"))
        plans.append(RealPlan(f"real/conv/{Path(r['file']).stem}.{fmt}", r,
                              rng.choice((8000, 16000, 22050, 44100, 48000)), fmt,
                              rng.choice((1, 2))))
    return plans


# ----------------------------------------------------------------------------- rendering


FFMPEG_CODECS = {"opus": ["-c:a", "libopus", "-b:a", "48k"],
                 "ogg": ["-c:a", "libvorbis", "-q:a", "4"],
                 "m4a": ["-c:a", "aac", "-b:a", "96k"]}


def write_audio(path: Path, x: np.ndarray, rate: int, fmt: str) -> None:
    """Write float32 (frames[, channels]) audio; ffmpeg for opus/ogg/m4a (bit-exact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.clip(x, -1.0, 1.0).astype(np.float32)
    if fmt in ("flac", "wav"):
        sf.write(path, x, rate, subtype="PCM_16")
    elif fmt == "mp3":
        sf.write(path, x, rate, format="MP3", subtype="MPEG_LAYER_III")
    else:
        ch = 1 if x.ndim == 1 else x.shape[1]
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "f32le", "-ar", str(rate), "-ac", str(ch), "-i", "-",
               *FFMPEG_CODECS[fmt], "-fflags", "+bitexact", "-flags:a", "+bitexact",
               "-map_metadata", "-1", "-f", "mp4" if fmt == "m4a" else "ogg", str(path)]
        subprocess.run(cmd, input=x.tobytes(), check=True, capture_output=True)


def measure(path: Path) -> dict:
    """Duration, rate and channels of a written file, read by libsndfile or PyAV."""
    try:
        i = sf.info(path)
        return {"duration": round(i.duration, 3), "sample_rate": i.samplerate,
                "channels": i.channels}
    except (RuntimeError, sf.LibsndfileError):
        import av

        with av.open(str(path)) as c:
            st = c.streams.audio[0]
            seconds = sum(f.samples / f.sample_rate for f in c.decode(st))
            return {"duration": round(seconds, 3), "sample_rate": st.rate,
                    "channels": st.channels}


def _timeline(plan: Plan, peak: float) -> np.ndarray:
    x = np.zeros(int(round(plan.length * SYNTH_RATE)), np.float32)
    for start, u, gain in plan.pieces:
        i = int(round(start * SYNTH_RATE))
        seg = u.audio[: max(0, len(x) - i)]
        x[i: i + len(seg)] += seg * (peak * gain)
    return x


def render(plan: Plan) -> np.ndarray:
    """Mix a plan to its target rate and channel layout, with optional noise floor."""
    g = np.random.default_rng(plan.seed)
    x = _timeline(plan, g.uniform(0.3, 0.9))
    if plan.rate != SYNTH_RATE:
        x = soxr.resample(x, SYNTH_RATE, plan.rate).astype(np.float32)
    if plan.channels == 2:
        a, b = {"dup": (1.0, 1.0), "pan": (g.uniform(0.4, 1), g.uniform(0.4, 1)),
                "left": (1.0, 0.0)}[plan.stereo]
        x = np.stack([x * a, x * b], axis=1)
    if plan.noise_db is not None:
        level = np.float32(10 ** (plan.noise_db / 20))
        x = x + g.standard_normal(x.shape, dtype=np.float32) * level
    return x


def _segments(plan: Plan) -> list[dict]:
    return [{"start": round(s, 3), "end": round(s + u.seconds, 3), "text": u.text,
             "voice": u.voice} for s, u, _ in plan.pieces]


def run_plan(out: Path, plan: Plan) -> dict:
    """Render and write one synthetic file; return its reference row."""
    path = out / plan.rel
    write_audio(path, render(plan), plan.rate, plan.fmt)
    segs = _segments(plan)
    texts = [s["text"] for s in segs]
    return {"file": plan.rel, "text": None if None in texts else " ".join(texts),
            **measure(path),
            "speech_seconds": round(sum(s["end"] - s["start"] for s in segs), 3),
            "segments": segs, "source": "espeak-ng", "format": plan.fmt}


def run_real(out: Path, plan: RealPlan) -> dict:
    """Copy or convert one real clip; return its reference row."""
    src, path = REAL_DIR / plan.ref["file"], out / plan.rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if plan.fmt is None:
        shutil.copyfile(src, path)
    else:
        x = _read_mono(src, plan.rate)
        write_audio(path, np.stack([x, x], 1) if plan.channels == 2 else x, plan.rate, plan.fmt)
    info = measure(path)
    return {"file": plan.rel, "text": plan.ref.get("text"), **info,
            "speech_seconds": round(_real_speech_seconds(plan.ref, info["duration"]), 3),
            "segments": plan.ref.get("segments"), "source": f"real:{plan.ref['corpus']}",
            "format": plan.fmt or Path(plan.rel).suffix[1:]}


# ----------------------------------------------------------------------------- driver


def _prepare(out: Path, overwrite: bool) -> None:
    if out.resolve().is_relative_to(REAL_DIR.resolve()):
        raise ValueError(f"refusing to write inside {REAL_DIR}")
    if out.exists() and any(out.iterdir()):
        if not (overwrite and (out / "references.jsonl").exists()):
            raise FileExistsError(f"{out} is not empty (use overwrite on a previous corpus)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def make_corpus(out_dir: Path, shape: str, minutes: float, seed: int = 0,
                overwrite: bool = False) -> Path:
    """Generate a corpus of at least `minutes` of audio; return the references path."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}")
    out, target = Path(out_dir), minutes * 60.0
    _prepare(out, overwrite)
    rng = random.Random(f"voxmill-corpus/{shape}/{seed}")
    speakers = make_speakers(rng)
    pool = build_pool(rng, max(60, min(480, int(minutes * 8))), speakers)
    refs = real_refs()
    real_utts = real_utterances(refs) if shape == "long" else []
    planner = Planner(shape, pool, rng, real_utts)
    with ThreadPoolExecutor(WORKERS) as ex:
        rows = list(ex.map(lambda p: run_real(out, p), real_plans(shape, refs, rng)))
        total = sum(r["duration"] for r in rows)
        while total < target:  # plan by length, then top up by measured duration
            plans, planned = [], total
            while planned < target:
                plans.append(planner.next(target - planned))
                planned += plans[-1].length
            new = list(ex.map(lambda p: run_plan(out, p), plans))
            rows += new
            total += sum(r["duration"] for r in new)
    ref_path = out / "references.jsonl"
    ref_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ref_path


def summarize(ref_path: Path) -> str:
    """One line: files, total minutes, speech minutes."""
    rows = [json.loads(line) for line in ref_path.read_text().splitlines()]
    dur = sum(r["duration"] for r in rows) / 60
    speech = sum(r["speech_seconds"] for r in rows) / 60
    return f"{ref_path.parent}: {len(rows)} files, {dur:.1f} min audio, {speech:.1f} min speech"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true",
                    help="replace OUT_DIR if it holds a previous corpus")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        ref = make_corpus(args.out_dir, args.shape, args.minutes, args.seed, args.overwrite)
    except (FileExistsError, ValueError) as e:
        ap.error(str(e))
    print(f"{summarize(ref)} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
