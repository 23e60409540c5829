"""voxmill against what a user would run instead: same corpus, same model, same machine, interleaved.

Runners, each a fresh process timed from outside (imports, Ray start-up and model load included):

* ``voxmill``, ``voxmill-quality``: ``voxmill run --no-plan`` with quality scoring off / on;
* ``batched``: faster-whisper's ``BatchedInferencePipeline`` per file (its own ``decode_audio``,
  Silero VAD, ``batch_size=16``): what faster-whisper and WhisperX users run;
* ``raydata``: a Ray Data pipeline in the shape of the public Daft / Ray Data audio-transcription
  benchmark: read the files, decode and resample to 16 kHz, cut 30 s chunks, ``map_batches`` with a
  transcription actor (batch 16), write Parquet.

All use the bundled tiny.en, int8, greedy (``--beam-size``), the machine's cores. Each round runs
every runner once, in a rotated order, so a shared machine's load falls on all of them alike. WER is
against the corpus's references (``make_corpus.py``: espeak-ng sentences and real clips), each
file's transcript the runner's pieces joined in time order, text normalised the same way for all
(``pipelines.metrics.text.normalise_text``); a file a runner drops counts as all deletions.

CLI: ``python benchmarks/peers.py --minutes 30 [--rounds 2] [--workdir /tmp/voxmill-peers]``
(or ``--corpus DIR`` for a corpus already built; ``--runners voxmill,batched`` for a subset;
``--voxmill-set vad.max_seconds=30`` to try a setting); writes ``WORKDIR/peers.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.metrics.text import normalise_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = ("voxmill", "voxmill-quality", "batched", "raydata")
BASELINE = "batched"
CHUNK_SECONDS = 30.0  # the Ray Data peer's fixed Whisper windows
BATCH = 16


# ----------------------------------------------------------------------------- corpus


def corpus_rows(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "references.jsonl").read_text().splitlines()]


def ensure_corpus(workdir: Path, minutes: float, seed: int) -> Path:
    """A mixed-shape corpus of `minutes` (make_corpus.py), built once per workdir."""
    from benchmarks.make_corpus import make_corpus

    corpus = workdir / f"corpus-mixed-{minutes:g}min-seed{seed}"
    if not (corpus / "references.jsonl").exists():
        make_corpus(corpus, "mixed", minutes, seed=seed, overwrite=corpus.exists())
    return corpus


# ----------------------------------------------------------------------------- peers (child processes)


def peer_batched(corpus: Path, out: Path, beam_size: int) -> None:
    """faster-whisper's BatchedInferencePipeline, one file at a time, as its README shows."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from pipelines.asr.whisper import default_model_path

    model = WhisperModel(default_model_path(), device="cpu", compute_type="int8", local_files_only=True)
    pipeline = BatchedInferencePipeline(model=model)
    texts = {}
    for row in corpus_rows(corpus):
        try:
            segments, _ = pipeline.transcribe(str(corpus / row["file"]), batch_size=BATCH, beam_size=beam_size,
                                              language="en")
            texts[row["file"]] = " ".join(s.text.strip() for s in segments)
        except Exception as err:  # noqa: BLE001 - a file it cannot read is a dropped file, as in voxmill
            print(f"batched: {row['file']}: {type(err).__name__}: {err}", file=sys.stderr)
    (out / "texts.json").write_text(json.dumps(texts))


def _decode_chunks(row: dict) -> list[dict]:
    """Ray Data step: the file's bytes decoded and resampled to 16 kHz (PyAV), cut into 30 s chunks."""
    import io

    from faster_whisper.audio import decode_audio

    try:
        audio = decode_audio(io.BytesIO(row["bytes"]), sampling_rate=16000)
    except Exception:  # noqa: BLE001 - unreadable: no chunks
        return []
    step = int(CHUNK_SECONDS * 16000)
    return [{"path": row["path"], "index": n, "audio": audio[at: at + step]}
            for n, at in enumerate(range(0, len(audio), step))]


class _RayDataAsr:
    """Ray Data actor: the model loaded once, then batched greedy decoding of <=30 s chunks."""

    def __init__(self, beam_size: int, threads: int):
        from pipelines.asr.whisper import Transcriber
        from schemas.config import AsrConfig

        self.model = Transcriber(AsrConfig(pack_seconds=0, beam_size=beam_size, batch_size=BATCH,
                                           cpu_threads=threads))
        self.model.setup()

    def __call__(self, batch: dict) -> dict:
        results = self.model(list(batch["audio"]))
        return {"path": batch["path"], "index": batch["index"], "text": [r.text for r in results]}


def peer_raydata(corpus: Path, out: Path, beam_size: int) -> None:
    """read -> decode/resample/chunk -> map_batches(transcription actor) -> write_parquet."""
    import pyarrow.parquet as pq
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    paths = [str(corpus / r["file"]) for r in corpus_rows(corpus)]
    threads = os.cpu_count() or 1
    ds = ray.data.read_binary_files(paths, include_paths=True)
    ds = ds.flat_map(_decode_chunks)
    ds = ds.map_batches(_RayDataAsr, fn_constructor_kwargs={"beam_size": beam_size, "threads": threads},
                        batch_size=BATCH, concurrency=1, num_cpus=1)
    ds.select_columns(["path", "index", "text"]).write_parquet(str(out / "parquet"))
    ray.shutdown()
    table = pq.read_table(out / "parquet").to_pylist()
    pieces: dict[str, list] = {}
    for row in table:
        pieces.setdefault(row["path"], []).append((row["index"], row["text"]))
    texts = {str(Path(p).relative_to(corpus)): " ".join(t for _, t in sorted(v)) for p, v in pieces.items()}
    (out / "texts.json").write_text(json.dumps(texts))


# ----------------------------------------------------------------------------- voxmill


def voxmill_texts(corpus: Path, output: Path) -> dict[str, str]:
    """Each source file's transcript: its segments' texts in time order, kept and rejected alike (the
    filters are a separate choice; this compares transcripts)."""
    from pipelines.io import tables

    pieces: dict[str, list] = {}
    for name in ("index", "rejects"):
        dataset = tables.open_parts(str(output), name, None)
        if not dataset.files:
            continue
        for row in dataset.to_table(columns=["source_uri", "start", "text"]).to_pylist():
            if row["text"] is not None:
                pieces.setdefault(row["source_uri"], []).append((row["start"] or 0.0, row["text"]))
    prefix = str(corpus.resolve())
    texts = {}
    for uri, parts in pieces.items():
        path = uri.split("://", 1)[-1]
        texts[os.path.relpath(path, prefix)] = " ".join(t for _, t in sorted(parts))
    return texts


def run_voxmill(corpus: Path, out: Path, quality: bool, beam_size: int, extra: list[str]) -> dict:
    import yaml

    settings: dict = {"quality": {"enabled": quality}, "asr": {"beam_size": beam_size}}
    for item in extra:  # dotted "section.key=value", value read as YAML
        key, value = item.split("=", 1)
        section, field = key.split(".", 1)
        settings.setdefault(section, {})[field] = yaml.safe_load(value)
    config = out / "job.yaml"
    config.write_text(yaml.safe_dump(settings))
    output = out / "output"
    cmd = [str(Path(sys.executable).with_name("voxmill")), "run", "--input", str(corpus), "--output", str(output),
           "--config", str(config), "--no-plan", "--json"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env())
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"voxmill run failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    (out / "texts.json").write_text(json.dumps(voxmill_texts(corpus, output)))
    return {"wall": wall, "summary_wall": summary["wall_seconds"], "startup": summary.get("startup_seconds"),
            "stage_seconds": {k: round(v, 2) for k, v in summary["stage_seconds"].items()},
            "asr_counts": {k: round(v, 2) for k, v in summary["asr_counts"].items()},
            "samples": summary["counts"]["samples"], "rejects": summary["counts"]["rejects"]}


def _env() -> dict:
    """This checkout first on the path (so a copy of the tree measures itself, not the installed one)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_peer(name: str, corpus: Path, out: Path, beam_size: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--corpus", str(corpus),
           "--workdir", str(out), "--beam-size", str(beam_size)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env())
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"wall": wall}


def run_one(name: str, corpus: Path, workdir: Path, beam_size: int, extra: list[str]) -> dict:
    out = workdir / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if name.startswith("voxmill"):
        result = run_voxmill(corpus, out, name == "voxmill-quality", beam_size, extra)
    else:
        result = run_peer(name, corpus, out, beam_size)
    texts = json.loads((out / "texts.json").read_text())
    return {**result, **word_error_rates(corpus_rows(corpus), texts)}


# ----------------------------------------------------------------------------- scoring


def word_error_rates(rows: list[dict], texts: dict[str, str]) -> dict:
    """Corpus WER over files with a reference: all of them, the real clips, the espeak-ng files."""
    import jiwer

    groups: dict[str, tuple[list, list]] = {"wer": ([], []), "wer_real": ([], []), "wer_espeak": ([], [])}
    for row in rows:
        if not row.get("text"):
            continue
        ref, hyp = normalise_text(row["text"]), normalise_text(texts.get(row["file"], ""))
        group = "wer_real" if row["source"].startswith("real") else "wer_espeak"
        for name in ("wer", group):
            groups[name][0].append(ref)
            groups[name][1].append(hyp)
    return {name: round(jiwer.wer(refs, hyps), 4) if refs else None for name, (refs, hyps) in groups.items()}


def summarise(runs: dict[str, list[dict]], audio_seconds: float) -> dict:
    table = {}
    for name, results in runs.items():
        speeds = [audio_seconds / r["wall"] for r in results]
        table[name] = {"audio_s_per_s": round(statistics.median(speeds), 2),
                       "spread": [round(min(speeds), 2), round(max(speeds), 2)],
                       "walls": [round(r["wall"], 1) for r in results],
                       "wer": results[-1]["wer"], "wer_real": results[-1]["wer_real"],
                       "wer_espeak": results[-1]["wer_espeak"]}
    base = table.get(BASELINE)
    for row in table.values():
        row["vs_batched"] = round(row["audio_s_per_s"] / base["audio_s_per_s"], 2) if base else None
    return table


def print_table(table: dict, audio_seconds: float) -> None:
    print(f"\n{audio_seconds / 60:.1f} min of audio")
    print("| runner | audio s/s (median) | spread | walls s | vs batched | WER | WER real | WER espeak |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        print(f"| {name} | {r['audio_s_per_s']} | {r['spread'][0]}-{r['spread'][1]} | "
              f"{', '.join(map(str, r['walls']))} | {r['vs_batched']}x | {r['wer']} | {r['wer_real']} | "
              f"{r['wer_espeak']} |")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, help="a make_corpus.py corpus; default: build one of --minutes")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runners", default=",".join(RUNNERS))
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--voxmill-set", action="append", default=[],
                    help="a voxmill setting for the job file, e.g. engine.unit_minutes=5 (repeatable)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-peers"))
    ap.add_argument("--child", choices=("batched", "raydata"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        {"batched": peer_batched, "raydata": peer_raydata}[args.child](args.corpus, args.workdir, args.beam_size)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = (args.corpus or ensure_corpus(args.workdir, args.minutes, args.seed)).resolve()
    audio_seconds = sum(r["duration"] for r in corpus_rows(corpus))
    names = args.runners.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for round_no in range(args.rounds):
        order = names[round_no % len(names):] + names[: round_no % len(names)]
        for name in order:
            result = run_one(name, corpus, args.workdir, args.beam_size, args.voxmill_set)
            runs[name].append(result)
            print(f"round {round_no + 1} {name}: {result['wall']:.1f} s, "
                  f"{audio_seconds / result['wall']:.1f} audio s/s, WER {result['wer']} "
                  f"{ {k: result[k] for k in ('startup', 'stage_seconds', 'asr_counts') if k in result} }",
                  flush=True)
    table = summarise(runs, audio_seconds)
    print_table(table, audio_seconds)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "corpus": str(corpus),
              "audio_seconds": audio_seconds, "cpus": os.cpu_count(), "table": table, "runs": runs}
    (args.workdir / "peers.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.workdir / 'peers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
