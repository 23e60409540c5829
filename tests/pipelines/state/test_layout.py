"""Units cut in Arrow and the appended Parquet layout: the same units a file-by-file loop cuts, read
back unit by unit, alongside a layout an earlier version wrote as JSON."""
from __future__ import annotations

import hashlib
import json
import random

import pyarrow as pa
import pytest

from pipelines.records import SourceFile
from pipelines.state import jobstate, layout
from pipelines.state.units import EXCERPT_CONTEXT, FALLBACK_BYTES_PER_SECOND, VAD_STEP, cut_units, ordered
from schemas.config import EngineConfig, JobConfig
from schemas.tables import MANIFEST_SCHEMA


def loop_units(rows: list[dict], config: EngineConfig) -> list[tuple[list[SourceFile], str, float]]:
    """The cut as one loop over files (what voxmill did before issue 21): (files, digest, seconds)."""
    budget, excerpt = config.unit_minutes * 60, round(config.excerpt_minutes * 60 / VAD_STEP) * VAD_STEP
    pieces = []
    for r in sorted(rows, key=lambda r: r["uri"]):
        d = r["duration"]
        if r["error"] or not d or d <= excerpt * 1.5:
            pieces.append(SourceFile(r["id"], r["uri"], d, r["error"], length=d or (r["bytes"] or 0) / FALLBACK_BYTES_PER_SECOND))
            continue
        count = int(d // excerpt)
        for k in range(count):
            last = k == count - 1
            pieces.append(SourceFile(r["id"], r["uri"], d - k * excerpt if last else excerpt, None, offset=k * excerpt,
                                     limit=None if last else excerpt, context=EXCERPT_CONTEXT,
                                     length=d - k * excerpt if last else excerpt))
    units, current, seconds = [], [], 0.0
    for p in pieces:
        if current and (seconds + p.length > budget or len(current) >= config.unit_max_files):
            units.append(current)
            current, seconds = [], 0.0
        current.append(p)
        seconds += p.length
    units += [current] if current else []
    names = (lambda u: "\n".join(f"{f.id}@{f.offset:.3f}" if f.context else f.id for f in u))
    return [(u, hashlib.sha1(names(u).encode()).hexdigest(), sum(f.duration or 0.0 for f in u)) for u in units]


def manifest(rng: random.Random, count: int, prefix: str = "/in/") -> pa.Table:
    rows = [{"id": f"{prefix}{i}", "uri": f"{prefix}{rng.randrange(10**7):07d}-{i}.flac",
             "bytes": rng.choice([None, 0, rng.randrange(10**7)]), "container": None, "codec": None,
             "sample_rate": None, "channels": None, "error": rng.choice([None] * 9 + ["empty file"]),
             "duration": rng.choice([None, 0.0, rng.uniform(0, 20), rng.uniform(0, 900), rng.uniform(600, 20000)])}
            for i in range(count)]
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


@pytest.mark.parametrize("seed", range(3))
def test_units_cut_in_arrow_are_the_units_a_file_by_file_loop_cuts(seed):
    rng = random.Random(seed)
    table = manifest(rng, rng.randrange(1, 400))
    config = EngineConfig(unit_minutes=rng.choice([0.5, 3, 30]), unit_max_files=rng.choice([1, 7, 2000]),
                          excerpt_minutes=rng.choice([1, 10]))
    cut = list(cut_units(ordered(table).to_batches(max_chunksize=rng.randrange(1, 60)), 5, config))
    files = pa.Table.from_batches([f for f, _ in cut])
    units = pa.Table.from_batches([u for _, u in cut]).to_pylist()
    expected = loop_units(table.to_pylist(), config)
    assert [u["unit"] for u in units] == list(range(5, 5 + len(expected)))
    assert [(u["digest"], u["seconds"], u["files"]) for u in units] == [(d, s, len(f)) for f, d, s in expected]
    got = files.drop_columns(["unit"]).to_pylist()
    assert got == [vars(f) for u, _, _ in expected for f in u]
    assert files.column("unit").to_pylist() == [n + 5 for n, (u, _, _) in enumerate(expected) for _ in u]


def test_the_layout_is_appended_parquet_read_back_unit_by_unit_beside_an_old_json_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "ROW_GROUP", 16)  # many row groups: a unit's files span two of them
    output = str(tmp_path / "out")
    rng = random.Random(7)
    first, later = manifest(rng, 300, "/a/"), manifest(rng, 200, "/b/")
    config = EngineConfig(unit_minutes=2, excerpt_minutes=1)
    old = loop_units(first.to_pylist()[:20], config)  # an output an earlier version started: JSON layout
    (tmp_path / "out" / "_ledger").mkdir(parents=True)
    (tmp_path / "out" / "_ledger" / "layout-000000.json").write_text(json.dumps(
        [{"index": i, "files": [vars(f) for f in u]} for i, (u, _, _) in enumerate(old)]))
    job = JobConfig(input="/a", output=output, engine=config)
    units = jobstate.claim(job, first)  # the 20 files the JSON layout holds are not cut again
    assert [u.index for u in units] == list(range(len(units)))
    again = jobstate.claim(job, pa.concat_tables([first, later]))  # a rerun: only the 200 new files
    assert [u.index for u in again[:len(units)]] == [u.index for u in units]
    read = jobstate.layout(output)
    assert [(u.index, u.digest, u.seconds) for u in read] == [(u.index, u.digest, u.seconds) for u in again]
    ids = [f.id for u in read for f in u.files]
    assert sorted(set(ids)) == sorted(first.column("id").to_pylist() + later.column("id").to_pylist())
    assert [u.digest for u in read[:len(old)]] == [d for _, d, _ in old]
    assert sorted(layout.known_ids(output).to_pylist()) == sorted(set(ids))
    parquet = sorted(p.name for p in (tmp_path / "out" / "_ledger").glob("layout-*.parquet"))
    assert parquet == [f"layout-{len(old):06d}.files.parquet", f"layout-{len(old):06d}.parquet",
                       f"layout-{len(units):06d}.files.parquet", f"layout-{len(units):06d}.parquet"]
    assert jobstate.claim(job, pa.concat_tables([first, later])) and len(jobstate.layout(output)) == len(again)
    listed = sorted(set(first.column("uri").to_pylist() + later.column("uri").to_pylist() + [f"/a/{i}.new" for i in range(50)]))
    known, held = layout.Known(output), []
    for start in range(0, len(listed), 37):  # a listing read in batches, in uri order
        held += known.held(pa.array(listed[start:start + 37])).tolist()
    assert [uri for uri, h in zip(listed, held) if not h] == [f"/a/{i}.new" for i in sorted(range(50), key=str)]
