"""The input zoo: every odd thing a real collection holds, run through `voxmill run` as a user would.

Builds a folder of real speech under odd names and through links, next to broken, lying, special
and unreadable entries, with an earlier run's output (and its report clips) inside it. Runs the CLI
twice (the second a rerun that must change nothing), then counts from the index and the rejects:
- tried: every entry a user would call an input (files, links, FIFOs, unreadable folders);
- accounted for: entries that are a sample's or a reject's source, each with its reason;
- lost: tried but neither; duplicated: a sample written twice, or an entry both kept and rejected.
Lost and duplicated must both be 0. As root, the job runs without the capabilities that let root
read any folder, so a folder closed to the user is closed to the job too.

    python benchmarks/zoo.py [--work /tmp/voxmill-zoo] [--json zoo.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "real-speech"
SPEECH = ("jfk.flac", "LJ002-0020.wav", "LJ002-0035.wav", "2412-153948-0000.flac", "libri-1088-134315-0000.wav")


def build(root: Path) -> None:
    """The zoo. Speech is real (the bundled clips); each odd entry is what users' disks really hold."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in SPEECH:
        shutil.copy(DEMO / name, root / name)
    odd = root / "odd names"
    odd.mkdir()
    for name in ("take [1] *?.wav", "with spaces (2).wav", "héllo – 日本語.wav", "UPPER.WAV", ".hidden.wav",
                 "a::b.wav"):
        shutil.copy(DEMO / "LJ002-0020.wav", odd / name)
    with open(os.path.join(os.fsencode(odd), b"latin1-caf\xe9.wav"), "wb") as fh:
        fh.write((DEMO / "LJ002-0020.wav").read_bytes())
    links = root / "links"
    links.mkdir()
    outside = root.parent / "outside"
    outside.mkdir()
    shutil.copy(DEMO / "2412-153948-0001.flac", outside / "only-through-a-link.flac")
    (links / "to-jfk.flac").symlink_to(root / "jfk.flac")
    (links / "to-outside.flac").symlink_to(outside / "only-through-a-link.flac")
    (links / "folder-alias").symlink_to(odd)
    (links / "loop").symlink_to(root)
    (links / "self.wav").symlink_to(links / "self.wav")
    (links / "dangling.flac").symlink_to(root / "gone.flac")
    (links / "dangling-folder").symlink_to(root / "gone-folder")
    os.mkfifo(root / "fifo.wav")
    locked = root / "locked"
    locked.mkdir()
    shutil.copy(DEMO / "jfk.flac", locked / "secret.flac")
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "random.flac").write_bytes(rng.bytes(20_000))
    (bad / "random.wav").write_bytes(rng.bytes(20_000))
    (bad / "text.mp3").write_text("not audio\n" * 100)
    flac = (DEMO / "jfk.flac").read_bytes()
    (bad / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    data = rng.integers(-2000, 2000, 143_000).astype("<i2").tobytes()
    (bad / "liar-1hz.wav").write_bytes(_wav_header(len(data), rate=1) + data)
    sf.write(bad / "silence.wav", np.zeros(16000 * 3, np.float32), 16000)
    sf.write(bad / "tiny.wav", np.zeros(400, np.float32), 16000)
    sf.write(bad / "noise.wav", np.clip(0.3 * rng.standard_normal(16000 * 4), -1, 1), 16000)


def _wav_header(size: int, rate: int) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
            + b"data" + struct.pack("<I", size))


def tried(root: Path, output: Path) -> set[str]:
    """What a user calls the inputs: every non-folder entry and every link, not descending links or
    the output; a folder the user cannot enter counts as one."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here == output or output in here.parents:
            dirs[:] = []
            continue
        closed = {d for d in dirs if not (here / d).is_symlink() and _closed(here / d)}
        found.update(_shown(here / d) for d in dirs if (here / d).is_symlink() or d in closed)
        found.update(_shown(here / name) for name in files)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink() and d not in closed and here / d != output]
    return found


def _closed(folder: Path) -> bool:
    """Closed to its owner (root reads it anyway, so os.access cannot tell)."""
    return folder.stat().st_mode & 0o500 != 0o500


def _shown(path: Path) -> str:
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def run(root: Path, output: Path, as_user: bool) -> tuple[float, dict]:
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if as_user else []
    command = [*prefix, str(ROOT / ".venv" / "bin" / "voxmill"), "run", "-i", str(root), "-o", str(output),
               "--no-plan", "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"voxmill run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, json.loads(done.stdout)


def account(output: Path, inputs: set[str]) -> dict:
    rows = ds.dataset(output / "index", format="parquet").to_table().to_pylist()
    rejects = ds.dataset(output / "rejects", format="parquet").to_table().to_pylist()
    sampled = {r["source_uri"] for r in rows}
    whole_rejects = {r["source_uri"] for r in rejects if r["key"] is None}
    seen = sampled | {r["source_uri"] for r in rejects}
    spans = Counter((r["source_uri"], round(r["start"], 3), round(r["end"], 3)) for r in rows)
    hashes = Counter(r["audio_hash"] for r in rows if r["audio_hash"])
    return {
        "tried": len(inputs),
        "accounted_for": len(inputs & seen),
        "lost": sorted(inputs - seen),
        "unexpected_sources": sorted(seen - inputs),  # e.g. the output read back as input
        "duplicated": sorted([f"{s} {a}-{b}" for (s, a, b), n in spans.items() if n > 1]
                             + sorted(sampled & whole_rejects)),
        "samples": len(rows),
        "rejects": len(rejects),
        "identical_audio_in_samples": sum(n - 1 for n in hashes.values() if n > 1),  # byte copies a user made
        "reasons": dict(Counter(f"{r['stage']}: {r['reason']}" for r in rejects if r["key"] is None)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/voxmill-zoo"))
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    root, output = args.work / "zoo", args.work / "zoo" / "out"
    build(root)
    as_user = os.geteuid() == 0
    (root / "locked").chmod(0)
    try:
        inputs = tried(root, output)
        first_s, first = run(root, output, as_user)
        subprocess.run([str(ROOT / ".venv" / "bin" / "voxmill"), "inspect", str(output)], check=True,
                       capture_output=True)  # writes out/report/audio/*.flac inside the input
        again_s, again = run(root, output, as_user)
    finally:
        (root / "locked").chmod(0o755)
    result = account(output, inputs)
    result.update({"first_run_seconds": round(first_s, 1), "rerun_seconds": round(again_s, 1),
                   "rerun_units_processed": again["counts"]["units_processed"],
                   "rerun_input_files": again["counts"]["input_files"], "first_input_files": first["counts"]["input_files"]})
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    ok = not result["lost"] and not result["duplicated"] and not result["unexpected_sources"]
    ok = ok and result["rerun_units_processed"] == 0 and result["rerun_input_files"] == result["first_input_files"]
    print(f"\ntried {result['tried']}, accounted for {result['accounted_for']}, lost {len(result['lost'])}, "
          f"duplicated {len(result['duplicated'])}; rerun processed {result['rerun_units_processed']} units: "
          + ("PASS" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
