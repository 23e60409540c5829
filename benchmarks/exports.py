"""Full-pass read time of each export (`voxmill export --to lhotse|nemo`), next to the shards themselves.

The source is the bundled clips (demo/real-speech) through a job in units of ~15 s with the fake ASR
backend (tests/fakes.py: reading does not depend on the words), its samples copied `--copies` times
under new keys into shards of `--shard-samples` (benchmarks/loader.py `reshard`). Each export is
written once (timed), then each reader makes `--repeats` full passes, interleaved (the machine is
shared), decoding every sample's audio; the median is kept.

CLI: ``python benchmarks/exports.py [--workdir /tmp/voxmill-bench-exports] [--copies 20]
[--shard-samples 16] [--repeats 3]``; writes ``WORKDIR/exports.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # Ray workers: tests.fakes

from benchmarks.loader import reshard, time_passes  # noqa: E402
from pipelines.export import export  # noqa: E402
from pipelines.loader import read_index  # noqa: E402
from pipelines.state import jobstate  # noqa: E402

DEMO = ROOT / "demo" / "real-speech"


def source_output(workdir: Path) -> Path:
    out = workdir / "job-out"
    if not (out / "summary.json").exists():
        from pipelines.job import run_job
        from schemas.config import load_job_config
        from tests.fakes import FAKE_ASR

        run_job(load_job_config(str(DEMO), str(out), overrides={"engine.unit_minutes": 0.25, "asr.backend": FAKE_ASR}))
    return out


def lhotse_pass(dest: Path) -> Iterable[tuple[int, float]]:
    from lhotse import CutSet

    for cut in CutSet.from_shar(in_dir=str(dest)):
        yield 1, cut.load_audio().shape[1] / cut.sampling_rate


def nemo_pass(manifest: Path) -> Iterable[tuple[int, float]]:
    folder = manifest.parent
    with open(manifest) as fh:
        for line in fh:
            row = json.loads(line)
            wave, rate = sf.read(folder / row["audio_filepath"], dtype="float32")
            yield 1, len(wave) / rate


def shards_pass(root: Path) -> Iterable[tuple[int, float]]:
    """The voxmill shards themselves, streamed by their sink, every sample's FLAC decoded with soundfile."""
    sink = jobstate.sink(str(root))
    for shard in sorted(set(read_index(str(root), columns=["shard"])["shard"].to_pylist())):
        for sample in sink.read(shard):
            wave, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
            yield 1, len(wave) / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench-exports"))
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--shard-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    out = args.workdir / "corpus"
    if not (out / "index").exists():
        reshard(source_output(args.workdir), out, args.copies, args.shard_samples)
    written = {}
    for to in ("lhotse", "nemo"):
        started = time.perf_counter()
        written[to] = export(str(out), to, str(args.workdir / f"export-{to}"))
        written[to]["export_wall_s"] = time.perf_counter() - started
    loops = {
        "lhotse: CutSet.from_shar(in_dir) + cut.load_audio()": lambda: lhotse_pass(args.workdir / "export-lhotse"),
        "nemo: manifest.json + soundfile.read(audio_filepath)":
            lambda: nemo_pass(args.workdir / "export-nemo" / "manifest.json"),
        "voxmill shards (baseline): sink.read(shard) + soundfile": lambda: shards_pass(out),
    }
    rows = time_passes(loops, args.repeats)
    result = {"shards": written["lhotse"]["shards"], "exports": written, "reads": rows}
    (args.workdir / "exports.json").write_text(json.dumps(result, indent=2))
    print(f"{result['shards']} shards, {rows[next(iter(rows))]['samples']} samples, "
          f"{rows[next(iter(rows))]['audio_s'] / 60:.1f} min of audio")
    print("| export | written in |\n|---|---|")
    for to, info in written.items():
        print(f"| {to} | {info['export_wall_s']:.2f} s ({info['files']} files) |")
    print("\n| full pass (audio decoded) | wall (median) | samples/s | audio s/s |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall_s']:.2f} s | {row['samples_per_s']:.0f} | {row['audio_s_per_s']:.0f} |")


if __name__ == "__main__":
    main()
