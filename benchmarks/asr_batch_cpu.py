"""ASR speed by batch size on this machine's CPU, in one process: does batching pay without a GPU?

Cuts a corpus (from `make_corpus.py`) into VAD segments as a prep task does, then times the
`Transcriber` (faster-whisper int8, packing on) at each batch size in the order given, so repeating a
size (``16,4,1,16``) shows the drift of a noisy machine. Prints x realtime speech and WER per run.

    python -m benchmarks.asr_batch_cpu CORPUS [--batch-sizes 16,4,1,16,4,1,16]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_stages import bench_asr, load_corpus, prepare  # noqa: E402
from pipelines.asr.whisper import default_model_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--batch-sizes", default="16,4,1,16,4,1,16")
    parser.add_argument("--model", default=None, help="default: the bundled tiny.en")
    args = parser.parse_args()
    refs, _ = load_corpus(args.corpus)
    audios, prepared, _ = prepare(refs, args.corpus, quality=False)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    runs = bench_asr(audios, prepared, refs, args.model or default_model_path(), sizes, "cpu")["runs"]
    print(json.dumps([{"batch": r["batch_size"], "x_realtime": round(r["speech_x_realtime"], 1),
                       "wer": round(r["wer"], 4)} for r in runs]))


if __name__ == "__main__":
    main()
