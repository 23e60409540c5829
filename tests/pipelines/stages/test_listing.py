"""The listing at scale: streamed to Parquet in path order, once per run; a rerun reads only new
files' headers; a discovery killed midway is resumed; a header on S3 is read as a small range."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import s3fs
import soundfile as sf
from moto.server import ThreadedMotoServer

from pipelines.job import run_job
from pipelines.stages import listing
from pipelines.stages.discover import Discover, probe
from pipelines.stages.listing import list_input, read_listing, write_listing
from pipelines.state import jobstate
from schemas.config import DiscoverConfig
from tests.conftest import S3_PORT, small_units_config
from tests.fakes import ROOT
from tests.faultproxy import FaultProxy


def _tree(root: Path, clips: Path) -> None:
    """Names that sort differently as a walk and as paths, a hard link, links to a file and to folders."""
    for sub in ("a", "a-b", "a/z", "b"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["a.flac", "a/x.flac", "a/z/y.flac", "a-b/c.flac", "b/d.flac", "a0.flac", "e.flac"]):
        shutil.copy(clips / "jfk.flac", root / name)
        with open(root / name, "ab") as fh:
            fh.write(bytes([i]))  # distinct files
    os.link(root / "b/d.flac", root / "b/d-hard.flac")
    os.symlink(root / "a/x.flac", root / "b/x-link.flac")
    outside = root.parent / "outside"
    outside.mkdir()
    shutil.copy(clips / "LJ002-0020.wav", outside / "o.wav")
    os.symlink(outside, root / "linked")
    os.symlink(root / "a", root / "again")


def test_the_listing_streams_to_parquet_in_path_order_with_each_file_read_once(tmp_path, clips, monkeypatch):
    monkeypatch.setattr(listing, "BATCH", 3)  # many batches
    root = tmp_path / "in"
    _tree(root, clips)
    _, rows = write_listing(str(root), {"flac", "wav"}, None, str(tmp_path / "listing.parquet"))
    table = pa.Table.from_batches(list(read_listing(str(tmp_path / "listing.parquet"))))
    _, expected = list_input(str(root), {"flac", "wav"})
    assert rows == table.num_rows == len(expected) == 11
    assert table.column("path").to_pylist() == sorted(table.column("path").to_pylist())
    assert [(r["path"], r["size"], r["error"]) for r in table.to_pylist()] == [(e.path, e.size, e.error) for e in expected]
    errors = {r["path"][len(str(root)) + 1:]: r["error"] for r in table.to_pylist() if r["error"]}
    assert errors == {"b/d.flac": "same file as another input path (a link): read once",  # d-hard.flac sorts first
                      "b/x-link.flac": "same file as another input path (a link): read once",
                      "again": "link to a folder already listed: read once"}
    assert str(root / "linked/o.wav") in table.column("path").to_pylist()  # only path to that file: read


def _files(folder: Path, clips: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(clips / "jfk.flac", folder / name)


def test_a_rerun_reads_only_new_files_headers_and_lists_once(tmp_path, clips):
    raw, out = tmp_path / "raw", str(tmp_path / "out")
    _files(raw, clips, ["b.flac", "d.flac", "f.flac"])
    discover = Discover(DiscoverConfig())
    config = small_units_config(str(raw), out)
    first = discover.probe(discover.list(str(raw), out))
    assert (first.rows, first.known, first.new_files, first.headers_read) == (3, 0, 3, 3)
    jobstate.claim(config, first)
    first.remove(others=True)
    _files(raw, clips, ["a.flac", "c.flac"])  # they sort between the known ones
    second = discover.probe(discover.list(str(raw), out))
    assert (second.rows, second.known, second.new_files, second.headers_read) == (5, 3, 2, 2)
    assert [Path(u).name for u in second.table().column("uri").to_pylist()] == ["a.flac", "c.flac"]
    units = jobstate.claim(config, second)
    assert sorted(Path(f.uri).name for u in units for f in u.files) == ["a.flac", "b.flac", "c.flac", "d.flac", "f.flac"]
    second.remove(others=True)
    assert not list(Path(out, "_ledger").glob("discovery-*"))


def _noise(folder: Path, count: int) -> None:
    """0.2 s of noise per file: VAD rejects each, so a run over them takes seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        sf.write(folder / f"clip-{i:02d}.flac", (rng.standard_normal(3200) * 30).astype(np.int16), 16000)


def test_a_run_whose_listing_another_run_swept_while_it_waited_lists_again(tmp_path, local_ray):
    raw, out = tmp_path / "raw", str(tmp_path / "out")
    _noise(raw, 3)
    discover = Discover(DiscoverConfig())
    waiting = discover.probe(discover.list(str(raw), out))  # planned, then waits for the lease
    first = discover.probe(discover.list(str(raw), out))  # the run holding the output lays out its units...
    jobstate.claim(small_units_config(str(raw), out), first)
    first.remove(others=True)  # ...and sweeps the other listings
    summary = run_job(small_units_config(str(raw), out), manifest=waiting)
    assert summary["complete"] and summary["counts"]["input_files"] == 3
    assert summary["counts"]["rejects"] == 3 and not list(Path(out, "_ledger").glob("discovery-*"))


CHILD = """
import sys, time
from pipelines.stages import discover, listing
listing.BATCH = 2
slow = discover.probe
discover.probe = lambda fs, path: (time.sleep(0.3), slow(fs, path))[1]
d = discover.Discover(discover.DiscoverConfig())
d.probe(d.list(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
def test_a_discovery_killed_midway_resumes_with_the_headers_it_read(tmp_path, clips, local_ray):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _noise(raw, 12)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(raw), str(out)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not list(out.glob("_ledger/discovery-*/manifest-000001.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # a kill during discovery: two batches of headers are committed
    child.wait()
    assert len(list(out.glob("_ledger/discovery-*/manifest-*.parquet"))) < 6, "the child finished before the kill"
    summary = run_job(small_units_config(str(raw), str(out)))
    assert summary["complete"] and summary["counts"]["input_files"] == 12
    assert summary["counts"]["headers_read"] <= 12 - 4  # the killed run's headers were not read again
    assert summary["counts"]["samples"] + summary["counts"]["rejects"] == 12  # each input accounted for
    assert sorted(Path(f.uri).name for u in jobstate.layout(str(out)) for f in u.files) == sorted(os.listdir(raw))
    assert not list(out.glob("_ledger/discovery-*"))  # the run's listing and the killed run's headers are gone


@pytest.fixture
def s3_proxy(tmp_path):
    """moto's S3 API behind a counting proxy; the client talks to the proxy."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT)
    server.start()
    proxy = FaultProxy(S3_PORT).start()
    fs = s3fs.S3FileSystem(endpoint_url=proxy.url, skip_instance_cache=True)
    fs.mkdir("scale-raw")
    yield fs, proxy
    proxy.stop()
    server.stop()


def test_a_header_on_s3_is_read_as_a_small_range_and_a_listing_page_by_page(s3_proxy, tmp_path, monkeypatch):
    fs, proxy = s3_proxy
    big = tmp_path / "long.wav"
    sf.write(big, np.zeros(16000 * 180, np.int16), 16000)  # 3 minutes: 5.8 MB
    fs.put_file(str(big), "scale-raw/in/long.wav")
    fs.pipe({f"scale-raw/in/many/{i:03d}.flac": b"x" for i in range(24)})
    before = proxy.counts["bytes_out"]
    facts = probe(fs, "scale-raw/in/long.wav")
    assert (facts.sample_rate, facts.duration, facts.error) == (16000, 180.0, None)
    assert proxy.counts["bytes_out"] - before < 256 * 1024, "a header read downloaded the clip"
    monkeypatch.setattr(listing, "PAGE_KEYS", 10)
    requests = proxy.counts["requests"]
    paths = [e.path for e in listing._s3_pages(fs, "scale-raw/in")]
    assert proxy.counts["requests"] - requests == 3  # 25 keys, 10 a page
    assert paths == sorted(paths) and len(paths) == 25 and paths[0] == "scale-raw/in/long.wav"
