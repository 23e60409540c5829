"""Resume after kill -9: how much work a crash throws away, and whether the resumed output is exact.

Runs `voxmill run` once uninterrupted, then again into a fresh output, SIGKILLing the driver at a
random point of its processing K times and rerunning the same command after each kill, until one
run finishes. Reports, as a markdown table:

* redone cut: seconds of audio in units whose decode, resample, VAD and encode a killed run had
  started (the job notes it in VOXMILL_ASR_TRACE) but neither journaled nor ledgered. A journaled
  unit is read back, not decoded again (`pipelines/state/journal.py`).
* decoded again: the same seen from outside the job: seconds of audio in units whose files a
  killed run opened for decoding (inotify) and a later run opened again.
* redone scoring: seconds of segment audio in chunks whose quality scoring a killed run had
  started (same trace) but neither journaled nor ledgered.
* redone ASR: seconds of speech in ASR batches a killed run had started (noted in the same trace)
  but not saved to the unit's journal; journaled batches are read back, not decoded again.
  Their shares of the corpus are the cost of a crash (target < 5%), and so is the compute they
  cost, priced at the uninterrupted run's own per-stage rates, as a share of that run's compute.
* wall seconds of all the runs against the uninterrupted one (start-up is paid once per run);
* whether the final output equals the uninterrupted run's: same keys, same audio bytes per key.

The units in flight at a kill are at most prep workers + 2 per ASR actor (on 2 cores: one
preparing, one transcribing, one queued); of those only the decode of the unit being cut, or the
chunk being scored, and the ASR batch in progress are lost: the rest is in the journal.

CLI: ``python -m benchmarks.resume [--shape mixed] [--minutes 30] [--kills 4] [--unit-minutes 0.1]
[--workdir /tmp/voxmill-bench] [--seed 0]``; writes ``WORKDIR/resume.json``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.make_corpus import SHAPES, make_corpus, summarize  # noqa: E402
from benchmarks.processes import descendants, kill  # noqa: E402
from pipelines.stages.discover import Discover  # noqa: E402
from pipelines.state.journal import TRACE_ENV  # noqa: E402
from pipelines.state.units import WorkUnit, plan_units  # noqa: E402
from schemas.config import DiscoverConfig, EngineConfig  # noqa: E402

VOXMILL = Path(sys.executable).with_name("voxmill")
IN_OPEN = 0x20
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


# ----------------------------------------------------------------------------- seeing decodes


class OpenWatch:
    """Which corpus files get opened, and when (inotify IN_OPEN on every folder of the corpus).

    Discovery opens every file before the job is claimed; after that an open is a decode, so
    the units whose files were opened after the claim are the units a run had started.
    """

    def __init__(self, root: Path):
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders = {}
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            wd = self.libc.inotify_add_watch(self.fd, str(folder).encode(), IN_OPEN)
            self.folders[wd] = folder
        self.opens: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.fd], [], [], 0.1)[0]:
                continue
            data, now = os.read(self.fd, 1 << 16), time.time()
            offset = 0
            while offset < len(data):
                wd, _, _, size = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size: offset + EVENT.size + size].rstrip(b"\0").decode()
                if name:
                    self.opens.append((now, str(self.folders[wd] / name)))
                offset += EVENT.size + size

    def opened(self, since: float, until: float) -> set[str]:
        return {path for at, path in list(self.opens) if since <= at <= until}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)


# ----------------------------------------------------------------------------- processes


def _env(trace: Optional[Path] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if trace:
        env[TRACE_ENV] = str(trace)
    return env


def thrown_away(trace: Path, ledgered: set[int]) -> dict[str, float]:
    """Seconds, by stage ("segment": input audio, "quality": segment audio, "asr": speech), of the
    traced work whose result was saved nowhere: not in the unit's journal, and the unit not
    ledgered. That work is done again by the next run."""
    lost = {"segment": 0.0, "quality": 0.0, "asr": 0.0}
    for line in trace.read_text().splitlines() if trace.exists() else []:
        work = json.loads(line)
        unit = int(work["journal"].rstrip("/").rsplit("/", 1)[-1].split("-")[1])
        if unit not in ledgered and not _saved(work["result"]):
            lost[work["stage"]] += work["seconds"]
    return lost


def _saved(result: str) -> bool:
    """Whether a traced result was saved: a file, or `FILE#KEY` (a chunk's entry in the journal's
    one scores file, `journal.SCORES`)."""
    path, _, key = result.removeprefix("file://").partition("#")
    if not Path(path).exists():
        return False
    try:
        return not key or key in json.loads(Path(path).read_text())
    except ValueError:
        return False


def _ledgered(output: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in (output / "_ledger").glob("unit-*.json")}


def _claimed_at(output: Path) -> float:
    job = output / "_ledger" / "job.json"
    return job.stat().st_mtime if job.exists() else 0.0


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    wall: float
    finished: bool
    ledgered_before: int
    ledgered_after: int
    started_not_ledgered: list[int] = field(default_factory=list)  # units in flight at the kill
    opened: list[int] = field(default_factory=list)  # units whose files this run decoded
    decoded_again_seconds: float = 0.0  # audio of its opened units a later run opened again
    cut_redone_seconds: float = 0.0  # audio of units decoded and cut, neither journaled nor ledgered
    scoring_redone_seconds: float = 0.0  # segment audio scored, neither journaled nor ledgered
    asr_redone_seconds: float = 0.0  # speech in ASR batches started, neither journaled nor ledgered
    in_flight_bound_seconds: float = 0.0


def run_to_end(command: list[str]) -> tuple[float, dict]:
    clock = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_env())
    if done.returncode:
        raise RuntimeError(f"voxmill failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - clock, json.loads(done.stdout)


def final_run(command: list[str], output: Path, units: list[WorkUnit], watch: OpenWatch) -> Run:
    """Run the job to its end, noting which units' files it decoded."""
    before, started = len(_ledgered(output)), time.time()
    wall, _ = run_to_end(command)
    opened = _units_of(units, watch.opened(max(started, _claimed_at(output)), time.time()))
    return Run(wall, True, before, len(_ledgered(output)), opened=sorted(opened))


def killed_run(command: list[str], output: Path, units: list[WorkUnit], watch: OpenWatch,
               rng: random.Random, window: float) -> Run:
    """Start the job; once it has ledgered a unit, SIGKILL the driver after a random delay in
    [0, window) seconds (or let it finish). Count what the kill threw away."""
    before, started = _ledgered(output), time.time()
    trace = output.parent / f"asr-trace-{int(started * 1000)}.jsonl"
    clock = time.perf_counter()
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(trace),
                              start_new_session=True)
    while driver.poll() is None and len(_ledgered(output)) == len(before):
        time.sleep(0.05)
    deadline = time.time() + rng.uniform(0, window)
    while driver.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if driver.poll() is not None:
        return Run(time.perf_counter() - clock, True, len(before), len(_ledgered(output)))
    tree = descendants(driver.pid)
    killed_at = time.time()
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2.0)  # the rest of its Ray dies with it (fate-sharing); what does not, we kill
    kill(tree)
    wall = time.perf_counter() - clock
    after = _ledgered(output)
    decoded = _units_of(units, watch.opened(max(started, _claimed_at(output)), killed_at))
    pending = [u for u in units if u.index not in after]
    run = Run(wall, False, len(before), len(after), sorted(decoded - after), sorted(decoded),
              in_flight_bound_seconds=sum(u.seconds for u in pending[:3]))
    lost = thrown_away(trace, after)
    run.cut_redone_seconds, run.scoring_redone_seconds, run.asr_redone_seconds = lost.values()
    return run


def _units_of(units: list[WorkUnit], opened: set[str]) -> set[int]:
    unit_of = {f.uri: u.index for u in units for f in u.files}
    return {unit_of[path] for path in opened if path in unit_of}


def count_decoded_again(runs: list[Run], units: list[WorkUnit]) -> None:
    """For each run, the audio of the units it decoded that a later run decoded again."""
    for i, run in enumerate(runs):
        later = {u for r in runs[i + 1:] for u in r.opened}
        run.decoded_again_seconds = sum(units[u].seconds for u in set(run.opened) & later)


# ----------------------------------------------------------------------------- outputs


def samples(output: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for shard in sorted((output / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.rpartition(".")
                if suffix in ("flac", "wav"):
                    if key in out:
                        raise AssertionError(f"{key} written twice")
                    out[key] = tar.extractfile(member).read()
    return out


def same_output(a: Path, b: Path) -> tuple[bool, bool]:
    """(same keys, same bytes for every key)."""
    x, y = samples(a), samples(b)
    return set(x) == set(y), set(x) == set(y) and all(x[k] == y[k] for k in x)


# ----------------------------------------------------------------------------- main


def ensure_corpus(workdir: Path, shape: str, minutes: float) -> Path:
    corpus = workdir / f"corpus-{shape}-{minutes:g}min"
    if not (corpus / "references.jsonl").exists():
        make_corpus(corpus, shape, minutes, seed=0, overwrite=corpus.exists())
    print(summarize(corpus / "references.jsonl"))
    return corpus


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="mixed")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--unit-minutes", type=float, default=0.1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    corpus = ensure_corpus(args.workdir, args.shape, args.minutes)
    job = args.workdir / "resume-job.yaml"
    job.write_text(f"engine: {{unit_minutes: {args.unit_minutes}}}\n")
    units = plan_units(Discover(DiscoverConfig())(str(corpus)), EngineConfig(unit_minutes=args.unit_minutes))
    total = sum(u.seconds for u in units)
    print(f"{len(units)} units of up to {args.unit_minutes * 60:g} s, {total:.0f} s of audio")

    reference, resumed = args.workdir / "resume-ref", args.workdir / "resume-killed"
    for folder in (reference, resumed):
        shutil.rmtree(folder, ignore_errors=True)

    def command(output: Path) -> list[str]:
        return [str(VOXMILL), "run", "--input", str(corpus), "--output", str(output), "--config", str(job),
                "--no-plan", "--json"]

    ref_wall, ref_summary = run_to_end(command(reference))
    print(f"uninterrupted: {ref_wall:.1f} s")
    processing = max(1.0, ref_wall - ref_summary["startup_seconds"])
    rng, watch, runs = random.Random(args.seed), OpenWatch(corpus), []
    try:
        for _ in range(args.kills):
            runs.append(killed_run(command(resumed), resumed, units, watch, rng, processing / (args.kills + 1)))
            print(asdict(runs[-1]))
            if runs[-1].finished:
                break
        if not runs or not runs[-1].finished:
            runs.append(final_run(command(resumed), resumed, units, watch))
    finally:
        watch.close()
    count_decoded_again(runs, units)
    report(args, units, total, ref_wall, runs, same_output(reference, resumed), ref_summary)


CUT_STAGES = ("decode", "resample", "vad", "encode", "journal")


def compute_rates(summary: dict) -> tuple[dict[str, float], float]:
    """Seconds of compute per redone second, by stage, from the uninterrupted run's own stage
    times ("segment" per input second, "quality" and "asr" per second of kept speech: a little
    more than per second of segment audio), and that run's total compute seconds."""
    stages, input_s = summary["stage_seconds"], summary["input_hours"] * 3600
    kept_s = max(summary["output_hours"] * 3600, 1e-9)
    rates = {
        "segment": sum(stages.get(s, 0.0) for s in CUT_STAGES) / input_s,
        "quality": stages.get("quality", 0.0) / kept_s,
        "asr": stages.get("asr", 0.0) / kept_s,
    }
    return rates, sum(stages.values())


def _row(name: str, seconds: float, total: float, unit: str) -> str:
    share = seconds / total
    return (f"| {name} | {seconds:.1f} s / {total:.0f} s {unit} = **{share:.2%}** | < 5% | "
            f"{'yes' if share < 0.05 else 'no'} |")


def report(args: argparse.Namespace, units: list[WorkUnit], total: float, ref_wall: float, runs: list[Run],
           same: tuple[bool, bool], summary: dict) -> None:
    kills = [r for r in runs if not r.finished]
    redone = {"segment": sum(r.cut_redone_seconds for r in kills),
              "quality": sum(r.scoring_redone_seconds for r in kills),
              "asr": sum(r.asr_redone_seconds for r in kills)}
    decoded_again = sum(r.decoded_again_seconds for r in kills)
    rates, compute = compute_rates(summary)
    redone_compute = sum(redone[stage] * rates[stage] for stage in redone)
    bound = sum(r.in_flight_bound_seconds for r in kills)
    lines = ["| run | wall s | units ledgered before -> after | in flight at the kill | redone cut audio s "
             "| decoded again audio s | redone scoring audio s | redone ASR speech s |",
             "|---|---|---|---|---|---|---|---|",
             f"| uninterrupted | {ref_wall:.1f} | 0 -> {len(units)} | - | - | - | - | - |"]
    for i, r in enumerate(runs, 1):
        name = f"killed {i}" if not r.finished else "final resume"
        lines.append(f"| {name} | {r.wall:.1f} | {r.ledgered_before} -> {r.ledgered_after} | "
                     f"{len(r.started_not_ledgered) if not r.finished else '-'} | "
                     f"{r.cut_redone_seconds:.1f} | {r.decoded_again_seconds:.1f} | "
                     f"{r.scoring_redone_seconds:.1f} | {r.asr_redone_seconds:.1f} |")
    wall = sum(r.wall for r in runs)
    n = len(kills)
    lines += ["", "| metric | value | target | met |", "|---|---|---|---|",
              _row(f"redone compute / job compute ({n} kills)", redone_compute, compute, "of compute"),
              _row(f"audio processed twice, all stages / corpus ({n} kills)", sum(redone.values()), total,
                   "of audio"),
              _row(f"redone decode+resample+VAD audio / corpus ({n} kills)", redone["segment"], total, "of audio"),
              _row(f"audio decoded again (inotify) / corpus ({n} kills)", decoded_again, total, "of audio"),
              _row(f"redone scoring (DNSMOS) audio / corpus ({n} kills)", redone["quality"], total, "of audio"),
              _row(f"redone ASR speech / corpus ({n} kills)", redone["asr"], total, "of audio"),
              f"| bound: units in flight at each kill / corpus | {bound / total:.1%} | | |",
              f"| final output = uninterrupted (keys / audio bytes) | {'yes' if same[0] else 'NO'} / "
              f"{'yes' if same[1] else 'NO'} | yes | {'yes' if all(same) else 'no'} |",
              f"| wall of all runs / uninterrupted | {wall:.1f} / {ref_wall:.1f} s = {wall / ref_wall:.2f}x | | |",
              "", "compute per redone second (uninterrupted run): "
              + ", ".join(f"{k} {v:.4f} s" for k, v in rates.items())]
    table = "\n".join(lines)
    print(table)
    (args.workdir / "resume.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "units": len(units), "corpus_seconds": total,
        "uninterrupted_wall": ref_wall, "runs": [asdict(r) for r in runs], "redone": redone,
        "decoded_again_seconds": decoded_again,
        "redone_compute_seconds": redone_compute, "compute_seconds": compute, "rates": rates,
        "in_flight_bound_seconds": bound, "same_keys": same[0], "same_bytes": same[1], "table": table,
    }, indent=2))


if __name__ == "__main__":
    main()
