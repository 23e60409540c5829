"""`voxmill inspect` and the report: numbers checked against the output's own tables, plots decoded,
and the page opened in a real headless Chromium, where the images load and a sample plays."""
from __future__ import annotations

import asyncio
import hashlib
import html
import io
import json
import shutil
import tarfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipelines import refilter as refiltering
from pipelines import report
from pipelines.io import storage
from pipelines.loader import IndexedShards
from pipelines.state.ledger import Ledger, to_table
from schemas.metrics import METRICS, Metric

CHROMIUM = "/usr/bin/chromium"
QUALITY = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "snr_db", "clipping", "loudness_lufs", "chars_per_second")
BAR_BLUE = (59, 110, 165)  # the histogram colour (#3b6ea5)
INPUT_BLUE = (31, 119, 180)  # the throughput plot's input line (matplotlib's C0)


def _copy(finished_job, tmp_path_factory, name: str) -> Path:
    """A private copy of the session's finished job: other tests compare that output byte for byte."""
    config, _ = finished_job
    target = tmp_path_factory.mktemp(name) / "out"
    shutil.copytree(config.output, target)
    return target


def _read(folder: Path) -> pa.Table:
    """Every part, each read on its own and promoted to one schema: independent of report.read_parts."""
    tables = [pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))]
    return pa.concat_tables(tables, promote_options="default")


@pytest.fixture(scope="module")
def written(finished_job, tmp_path_factory) -> tuple[Path, report.DatasetSummary, dict]:
    output = _copy(finished_job, tmp_path_factory, "report")
    return output, report.write_report(str(output)), finished_job[1]


@pytest.fixture(scope="module")
def refiltered(finished_job, tmp_path_factory) -> tuple[Path, report.DatasetSummary, float]:
    """The session's job refiltered with min_snr_db at its median: about half the samples move to
    rejects, their audio to rejected/ shards; the report shows 3 of them."""
    source = _copy(finished_job, tmp_path_factory, "refilter-source")
    snr = sorted(_read(source / "index")["snr_db"].to_pylist())
    threshold = snr[len(snr) // 2]
    target = source.parent / "refiltered"
    refiltering.refilter(str(source), {"min_snr_db": threshold}, str(target))
    return target, report.write_report(str(target), samples=4, rejected=3), threshold


def _bar_pixels(png: Path) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return int((pixels == BAR_BLUE).all(axis=1).sum())


def test_summary_matches_the_index_rejects_and_ledger(written):
    output, summary, job = written
    index, rejects = _read(output / "index"), _read(output / "rejects")
    assert summary.samples == index.num_rows == job["counts"]["samples"] > 0
    assert summary.kept_hours == pytest.approx(pc.sum(index["duration"]).as_py() / 3600)
    assert summary.kept_hours == pytest.approx(job["output_hours"])
    assert summary.shards == len(set(index["shard"].to_pylist()))
    assert summary.sources == len(set(index["source_id"].to_pylist()))
    assert summary.units == job["counts"]["units"]
    assert summary.input_hours == pytest.approx(job["input_hours"])
    assert summary.rejects == rejects.num_rows == job["counts"]["rejects"] > 0
    assert summary.dropped_hours == pytest.approx(sum(d or 0 for d in rejects["duration"].to_pylist()) / 3600)
    by_stage: dict[str, float] = {}
    for stage, seconds in zip(rejects["stage"].to_pylist(), rejects["duration"].to_pylist()):
        by_stage[stage] = by_stage.get(stage, 0.0) + (seconds or 0.0) / 3600
    shown: dict[str, float] = {}
    for drop in summary.dropped:
        shown[drop.stage] = shown.get(drop.stage, 0.0) + drop.hours
    assert shown == pytest.approx(by_stage)
    assert sum(d.rows for d in summary.dropped) == rejects.num_rows
    metrics = rejects["metric"].to_pylist() if "metric" in rejects.column_names else [None] * rejects.num_rows
    plain = Counter(f"{s}: {r}" for s, r, m in zip(rejects["stage"].to_pylist(), rejects["reason"].to_pylist(),
                                                   metrics) if not m)  # no quality metric: the reason is the label
    assert plain and {d.label: d.rows for d in summary.dropped if d.label in plain} == plain
    assert summary.trimmed_hours == pytest.approx(summary.input_hours - summary.kept_hours - summary.dropped_hours)
    durations = np.array(index["duration"].to_pylist())
    assert summary.duration.p50 == pytest.approx(np.median(durations))
    assert summary.duration.max == pytest.approx(durations.max()) and summary.duration.count == len(durations)
    assert sum(lang.samples for lang in summary.languages) == summary.samples


def test_scores_are_reported_only_where_the_index_has_them(written):
    """On an output without the quality columns (or with them) each score is what the index holds."""
    output, summary, _ = written
    index = _read(output / "index")
    for column in (*QUALITY, "avg_logprob"):
        values = [v for v in index[column].to_pylist() if v is not None] if column in index.column_names else []
        if values:
            assert summary.scores[column].count == len(values)
            assert summary.scores[column].p50 == pytest.approx(np.median(values), rel=1e-5)
        else:
            assert summary.scores[column] is None
    assert summary.scores["avg_logprob"] is not None  # ASR always scores
    assert (_bar_pixels(output / "report/dnsmos.png") > 100) == (summary.scores["dnsmos_ovrl"] is not None)


def test_throughput_follows_the_ledger(written):
    output, summary, job = written
    records = [json.loads(p.read_text()) for p in (output / "_ledger").glob("unit-*.json")]
    points = summary.throughput
    assert [p.at for p in points] == sorted(p.at for p in points)
    assert points[-1].at == max(datetime.fromisoformat(r["finished_at"]) for r in records)
    assert points[-1].input_hours == pytest.approx(job["input_hours"])
    assert points[-1].output_hours == pytest.approx(job["output_hours"])
    # A single run starts from zero at its start; after a rerun that skipped every unit (other tests
    # rerun the shared job), summary.json holds the rerun's start and the units keep their own times,
    # from zero at the first unit's start (its finish less its stage seconds).
    started = datetime.fromisoformat(json.loads((output / "summary.json").read_text())["started_at"])
    first = min(records, key=lambda r: r["finished_at"])
    from_run = started <= datetime.fromisoformat(first["finished_at"])
    assert len(points) == len(records) + 1 and points[0].input_hours == points[0].output_hours == 0.0
    assert points[0].at == started if from_run else (points[1].at - points[0].at).total_seconds() == pytest.approx(
        sum(first["stage_seconds"].values()))
    assert all(a.input_hours <= b.input_hours for a, b in zip(points, points[1:]))


def test_plots_are_real_pngs(written):
    output, _, _ = written
    for name in report.PLOTS:
        with Image.open(output / "report" / name) as image:
            image.load()
            assert image.format == "PNG" and image.size == (640, 360), name
            assert np.asarray(image.convert("L")).std() > 5, f"{name} is blank"
    assert _bar_pixels(output / "report/duration.png") > 500  # the duration histogram has bars


def test_report_files_are_whole_and_the_clips_are_the_stored_bytes(written):
    output, summary, _ = written
    folder = output / "report"
    assert not [p for p in folder.rglob("*") if storage.SCRATCH_MARK in p.name]
    assert json.loads((folder / "summary.json").read_text())["samples"] == summary.samples
    rows = summary.sample_rows
    assert 0 < len(rows) == min(20, summary.samples) and len({r.key for r in rows}) == len(rows)
    shards = IndexedShards(str(output))
    for row in rows:
        stored = shards.raw(row.key)
        assert (folder / row.audio).read_bytes() == stored[row.audio.rsplit(".", 1)[1]]
        assert row.text == json.loads(stored["json"])["text"]
    assert sorted(p.name for p in (folder / "audio").iterdir()) == sorted(Path(r.audio).name for r in rows)
    assert summary.report == str(folder / "index.html")


def test_fewer_samples_rewrite_the_report_and_drop_stale_clips(finished_job, tmp_path_factory):
    output = _copy(finished_job, tmp_path_factory, "stale")
    first = report.write_report(str(output), samples=6)
    again = report.write_report(str(output), samples=3)
    assert report.write_report(str(output), samples=3).sample_rows == again.sample_rows  # deterministic
    clips = sorted(p.name for p in (output / "report/audio").iterdir())
    assert len(first.sample_rows) == 6 and clips == sorted(Path(r.audio).name for r in again.sample_rows)
    assert (output / "report/index.html").read_text().count("<audio ") == 3


VIEWPORTS = ((420, 900), (1400, 900), (1920, 1080))  # a phone, the width the audio column was cut off at, a wide screen
# The page's boxes that leave the window (left of 0 or right of its width), the page's scroll
# width, and each player's width and whether it stays inside its cell.
OVERFLOW = """() => {
    const width = document.documentElement.clientWidth;
    const outside = [...document.querySelectorAll('h1, h2, p, table, th, td, figure, img, audio')]
        .map(e => [e, e.getBoundingClientRect()])
        .filter(([, r]) => r.width > 0 && (r.left < -0.5 || r.right > width + 0.5))
        .map(([e, r]) => `${e.tagName} ${Math.round(r.left)}..${Math.round(r.right)} ${e.textContent.slice(0, 40)}`);
    const players = [...document.querySelectorAll('audio')].map(a => {
        const r = a.getBoundingClientRect(), cell = a.closest('td').getBoundingClientRect();
        return [Math.round(r.width), r.left >= cell.left - 0.5 && r.right <= cell.right + 0.5];
    });
    return {width, scroll: document.documentElement.scrollWidth, outside, players};
}"""
METADATA = """() => Promise.all([...document.querySelectorAll('audio')].map(a =>
    new Promise(ok => {
        const done = () => ok(a.error ? `error ${a.error.code}: ${a.getAttribute('src')}` : a.duration);
        if (a.readyState >= 1 || a.error) return done();
        a.addEventListener('loadedmetadata', done);
        a.addEventListener('error', done);
        setTimeout(done, 10000);
    })))"""


def _fits(page, viewports=VIEWPORTS) -> None:
    for width, height in viewports:
        page.set_viewport_size({"width": width, "height": height})
        found = page.evaluate(OVERFLOW)
        assert not found["outside"] and found["scroll"] <= found["width"], (width, found)
        assert found["players"] and all(inside and shown >= 150 for shown, inside in found["players"]), (width, found)


def test_page_in_headless_chromium_shows_the_plots_and_plays_a_sample(written, refiltered):
    """The page as a user opens it from disk: every image decodes, every clip loads (kept and
    rejected), the shortest one plays to its end (autoplay allowed, since no user clicks in a test),
    and at a phone's width, at 1400 px and at 1920 px no cell leaves the window and every player
    is whole inside its cell."""
    from playwright.sync_api import sync_playwright

    output, summary, _ = written
    assert Path(CHROMIUM).exists(), "chromium missing: `bash scripts/setup.sh test` installs it"
    shortest = min(summary.sample_rows, key=lambda r: r.duration)
    started = time.perf_counter()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto((output / "report/index.html").as_uri(), wait_until="load")
            assert "voxmill report" in page.title()
            images = page.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
            durations = page.evaluate(METADATA)
            _fits(page)
            played = page.evaluate("""async (src) => {
                const a = [...document.querySelectorAll('audio')].find(e => e.getAttribute('src') === src);
                const ended = new Promise(ok => a.addEventListener('ended', ok));
                await a.play();
                const first = a.currentTime, clock = performance.now();
                await Promise.race([ended, new Promise(ok => setTimeout(ok, 15000))]);
                return {ended: a.ended, currentTime: a.currentTime, first, error: a.error && a.error.code,
                        seconds: (performance.now() - clock) / 1000};
            }""", shortest.audio)
            page.goto((refiltered[0] / "report/index.html").as_uri(), wait_until="load")
            rejected = page.evaluate(METADATA)
            _fits(page, VIEWPORTS[:2])
        finally:
            browser.close()
    seconds = time.perf_counter() - started
    assert sorted(src for src, _, _ in images) == sorted(report.PLOTS)
    assert all(complete and width == 640 for _, complete, width in images), images
    assert durations == pytest.approx([r.duration for r in summary.sample_rows], abs=0.05)
    assert played["error"] is None and played["ended"] and played["currentTime"] > played["first"], played
    assert played["currentTime"] == pytest.approx(shortest.duration, abs=0.05)
    assert played["seconds"] > 0.8 * shortest.duration, played  # really played out, not cut short
    shown = refiltered[1]
    assert rejected == pytest.approx([r.duration for r in [*shown.sample_rows, *shown.rejected_rows]], abs=0.05)
    assert not errors
    print(f"chromium: loaded, {len(images)} images, played {shortest.duration:.2f} s in {seconds:.1f} s")


def test_rejected_samples_are_listed_with_their_reason_and_stored_audio(refiltered):
    output, summary, threshold = refiltered
    heard = {r["key"]: r for r in _read(output / "rejects").to_pylist() if r["shard"]}
    assert summary.rejected_audio == len(heard) >= 3 and summary.samples + len(heard) == 10
    rows = summary.rejected_rows
    assert len(rows) == 3 and len({r.key for r in rows}) == 3
    page = (output / "report/index.html").read_text()
    for row in rows:
        assert row.reason == f"quality: snr_db < {threshold:g}" and heard[row.key]["snr_db"] < threshold
        assert row.text == heard[row.key]["text"] and row.duration == heard[row.key]["duration"]
        with tarfile.open(output / row.shard) as tar:  # the rejected/ shard, read without voxmill
            assert (output / "report" / row.audio).read_bytes() == tar.extractfile(f"{row.key}.flac").read()
        assert row.audio.startswith("rejected/") and f'src="{row.audio}"' in page
        assert f"<td data-label=\"reason\">{html.escape(row.reason)}</td>" in page  # autoescaped: &lt;
    assert page.count("<audio ") == len(summary.sample_rows) + 3
    assert sorted(p.name for p in (output / "report/rejected").iterdir()) == sorted(Path(r.audio).name for r in rows)


def test_page_escapes_what_the_data_holds(written):
    hostile = written[1].model_copy(deep=True)
    hostile.output = "/data/<b>out</b>"
    hostile.sample_rows[0].text = '<script>alert("x")</script> & more'
    shown = report.page(hostile)
    assert "<script>" not in shown and "<b>" not in shown
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; more" in shown and "/data/&lt;b&gt;out" in shown


def test_report_reads_each_table_once(written, monkeypatch):
    from pipelines.report import summary as gathering

    folders: list[str] = []
    real = gathering.read_parts
    monkeypatch.setattr(gathering, "read_parts", lambda output, folder, *args, **kwargs:
                        folders.append(folder) or real(output, folder, *args, **kwargs))
    found = report.gather(str(written[0]))
    assert folders == ["index", "rejects"] and all(r.text for r in found.sample_rows)


def test_a_metric_added_to_the_registry_shows_up_by_itself(finished_job, tmp_path_factory):
    """A new index column declared in schemas/metrics.py gets its distribution row, under its label,
    in the summary, the page and the markdown, with no change to the report."""
    output = _copy(finished_job, tmp_path_factory, "registry")
    scored = 0
    for part in sorted((output / "index").glob("part-*.parquet")):
        table = pq.read_table(part)
        pq.write_table(table.append_column("pitch_hz", pa.array(np.linspace(90, 250, table.num_rows), pa.float32())),
                       part)
        scored += table.num_rows
    registry = METRICS.with_metric(Metric("pitch_hz", pa.float32(), "prep", label="pitch (Hz)"))
    summary = report.write_report(str(output), samples=2, rejected=0, registry=registry)
    assert summary.scores["pitch_hz"].count == scored > 0 and summary.scores["pitch_hz"].max == pytest.approx(250)
    assert f'<td>pitch (Hz)</td><td data-label="count">{scored}</td>' in (output / "report/index.html").read_text()
    assert f"| pitch (Hz) | {scored} |" in report.markdown(summary, registry)
    assert "pitch_hz" not in report.gather(str(output), samples=0).scores  # undeclared: not shown


def test_exact_copies_are_counted_as_the_loader_drops_them():
    from pipelines.io.tables import later_copies
    from pipelines.report.summary import _later_copies

    index = pa.table({"key": [f"k{i}" for i in range(8)], "audio_hash": ["a", "b", "a", None, "a", "c", "c", None]})
    assert _later_copies(index) == pc.sum(later_copies(index)).as_py() == 3
    assert _later_copies(index.drop_columns("audio_hash")) is None


def test_drops_group_in_arrow_as_each_row_is_labelled():
    rows = [("vad", "no speech found", 1.0, None, None, None), ("vad", "no speech found", None, None, None, None),
            ("quality", "snr_db 3.1 < 20", 2.0, "snr_db", 3.1, 20.0),
            ("quality", "snr_db 7.5 < 20", 3.0, "snr_db", 7.5, 20.0),
            ("quality", "clipping 0.2 > 0.01", 1.5, "clipping", 0.2, 0.01),
            ("quality", "near duplicate of a-1", 0.5, "near_duplicate_of", None, None),
            ("asr", "empty transcript", 4.0, "", None, None)]
    names = ("stage", "reason", "duration", "metric", "value", "threshold")
    table = pa.Table.from_pylist([dict(zip(names, row)) for row in rows])
    rows_of, seconds_of = Counter(), Counter()
    for stage, reason, seconds, metric, value, threshold in rows:
        label = report.drop_label(stage, reason, metric, value, threshold)
        rows_of[label] += 1
        seconds_of[label] += seconds or 0.0
    found = report.drops(table)
    assert {d.label: d.rows for d in found} == rows_of == {
        "vad: no speech found": 2, "quality: snr_db < 20": 2, "quality: clipping > 0.01": 1,
        "quality: near_duplicate_of": 1, "asr: empty transcript": 1}
    assert {d.label: d.hours * 3600 for d in found} == pytest.approx(dict(seconds_of))
    assert [d.hours for d in found] == sorted((d.hours for d in found), reverse=True)
    older = report.drops(table.select(["stage", "reason", "duration"]))  # parts without the metric columns
    assert sum(d.rows for d in older) == len(rows) and "quality: snr_db 3.1 < 20" in {d.label for d in older}


def test_throughput_with_tied_finish_times(finished_job, tmp_path_factory):
    """Two units that finished at the same instant (issue 21: sorting (datetime, dict) raised TypeError)."""
    output = _copy(finished_job, tmp_path_factory, "tied")
    ledger = Ledger(str(output))
    records = ledger.done()
    first, second, *_ = sorted(records)
    tie = records[first]["finished_at"]
    ledger.record(second, dict(records[second], finished_at=tie))
    summary = report.write_report(str(output), samples=2)
    tied = [p for p in summary.throughput if p.at == datetime.fromisoformat(tie)]
    assert len(tied) == 2 and tied[0].input_hours < tied[1].input_hours
    assert summary.throughput[-1].input_hours == pytest.approx(summary.input_hours)
    assert [p.at for p in summary.throughput] == sorted(p.at for p in summary.throughput)


def test_throughput_plot_of_one_short_unit_draws_a_slope():
    """A one-unit run of 3 s: a line rising from zero across the plot, from the run's start, or
    without it (no summary.json) from the unit's start by its stage seconds (before: a step at the
    right edge, or one dot on an axis of years)."""
    unit = to_table([{"unit": 0, "finished_at": "2026-11-29T12:00:03+00:00", "input_seconds": 20.0,
                      "output_seconds": 12.0, "stage_seconds": {"decode": 0.5, "asr": 2.0}}])
    from_start = report.throughput(unit, "2026-11-29T12:00:00+00:00")
    from_unit = report.throughput(unit, None)
    assert [p.input_hours * 3600 for p in from_start] == [p.input_hours * 3600 for p in from_unit] == [0.0, 20.0]
    assert (from_unit[1].at - from_unit[0].at).total_seconds() == 2.5
    for shown in (from_start, from_unit):
        pixels = np.asarray(Image.open(io.BytesIO(report.throughput_png(shown))).convert("RGB")).astype(int)
        rows, columns = np.nonzero(np.abs(pixels - INPUT_BLUE).sum(axis=2) < 40)
        assert np.ptp(columns) > 300 and np.ptp(rows) > 150, (np.ptp(columns), np.ptp(rows))
        lowest = [rows[columns == c].max() for c in np.unique(columns)]  # per column, below the legend's sample
        assert np.corrcoef(np.unique(columns), lowest)[0, 1] < -0.99  # rising left to right all the way: a slope


def test_inspect_cli_prints_the_summary_and_json(written):
    output, summary, _ = written
    runner = CliRunner()
    shown = runner.invoke(app, ["inspect", str(output)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "kept hours" in shown.stdout and f"{summary.kept_hours:.4f}" in shown.stdout
    assert f"report: {output / 'report/index.html'}" in shown.stdout
    for drop in summary.dropped:
        assert drop.label in shown.stdout
    as_json = runner.invoke(app, ["inspect", str(output), "--json", "--no-report"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["samples"] == summary.samples and data["report"] is None
    assert data["dropped_hours"] == pytest.approx(summary.dropped_hours)


def test_inspect_cli_fails_clearly_on_a_missing_output_or_one_without_index(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "output not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "empty" / "index").mkdir(parents=True)
    empty = runner.invoke(app, ["inspect", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "holds no index" in empty.stderr
    assert not (tmp_path / "empty" / "report").exists()


# ---- outputs whose parts were written by different versions ----

def _measure(wave: np.ndarray, text: str, seconds: float) -> dict[str, float]:
    """Scores computed from the real clip: level, a frame-energy SNR, clipping, speaking rate;
    DNSMOS needs its model, so it stands in as a fixed function of the level here."""
    frames = wave[: len(wave) // 400 * 400].reshape(-1, 400)
    energy = np.maximum((frames ** 2).mean(axis=1), 1e-12)
    level = 10 * np.log10(max(float((wave ** 2).mean()), 1e-12))
    return {
        "snr_db": 10 * np.log10(np.percentile(energy, 90) / np.percentile(energy, 10)),
        "loudness_lufs": level - 0.691,
        "clipping": float((np.abs(wave) >= 0.999).mean()),
        "chars_per_second": len(text) / seconds,
        "dnsmos_ovrl": float(np.clip(4.5 + level / 40, 1, 5)),
        "dnsmos_sig": float(np.clip(4.7 + level / 40, 1, 5)),
        "dnsmos_bak": float(np.clip(4.2 + level / 50, 1, 5)),
    }


def _older_part(path: Path) -> None:
    """The part as a voxmill without quality scores wrote it."""
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([c for c in (*QUALITY, "audio_hash", "near_duplicate_of", "metric", "value",
                                                   "threshold") if c in table.column_names]), path)


@pytest.fixture(scope="module")
def mixed(finished_job, tmp_path_factory) -> tuple[Path, pa.Table, report.DatasetSummary]:
    """A copy whose largest index part carries quality scores, the other parts none, and whose
    rejects gained two quality rejects in a part with the new metric/value/threshold columns."""
    output = _copy(finished_job, tmp_path_factory, "mixed")
    for part in [*output.glob("index/part-*.parquet"), *output.glob("rejects/part-*.parquet")]:
        _older_part(part)
    part = max(output.glob("index/part-*.parquet"), key=lambda p: pq.read_metadata(p).num_rows)
    table = pq.read_table(part)
    shards = IndexedShards(str(output))
    scores = [_measure(shards[k]["waveform"].numpy(), t, d) for k, t, d in
              zip(table["key"].to_pylist(), table["text"].to_pylist(), table["duration"].to_pylist())]
    for column in QUALITY:
        table = table.append_column(pa.field(column, pa.float32()), pa.array([s[column] for s in scores], pa.float32()))
    keys = table["key"].to_pylist()
    stored = [shards.raw(k) for k in keys]
    hashes = [hashlib.sha1(files.get("flac") or files["wav"]).hexdigest() for files in stored]
    table = table.append_column("audio_hash", pa.array(hashes, pa.string()))
    table = table.append_column("near_duplicate_of", pa.array([None] * (len(keys) - 1) + [keys[0]], pa.string()))
    pq.write_table(table, part)
    rejects = pq.read_table(next(output.glob("rejects/part-*.parquet"))).schema
    quality = [{"source_id": "s", "source_uri": "file:///s.flac", "unit": 99, "key": f"s-{i}", "stage": "quality",
                "reason": f"dnsmos_ovrl {value:.2f} < 3.00", "start": 0.0, "end": seconds, "duration": seconds,
                "metric": "dnsmos_ovrl", "value": value, "threshold": 3.0}
               for i, (value, seconds) in enumerate([(2.41, 1.5), (1.93, 2.5)])]
    schema = rejects.append(pa.field("metric", pa.string())).append(pa.field("value", pa.float32())) \
        .append(pa.field("threshold", pa.float32()))
    pq.write_table(pa.Table.from_pylist(quality, schema=schema), output / "rejects/part-000099.parquet")
    return output, table, report.write_report(str(output))


def test_mixed_parts_report_the_scores_of_the_scored_part(mixed):
    output, scored, summary = mixed
    assert summary.samples == _read(output / "index").num_rows > scored.num_rows
    for column in QUALITY:
        values = scored[column].to_numpy().astype(np.float64)
        assert summary.scores[column].count == scored.num_rows, column
        assert summary.scores[column].p50 == pytest.approx(np.median(values), rel=1e-6)
        assert summary.scores[column].max == pytest.approx(values.max(), rel=1e-6)
    assert summary.near_duplicates == 1
    assert _bar_pixels(output / "report/dnsmos.png") > 100 and _bar_pixels(output / "report/snr.png") > 100
    scored_keys = set(scored["key"].to_pylist())
    for row in summary.sample_rows:
        assert (row.scores["dnsmos_ovrl"] is not None) == (row.key in scored_keys)
    page = (output / "report/index.html").read_text()
    assert f'<td>DNSMOS overall</td><td data-label="count">{scored.num_rows}</td>' in page


def test_quality_rejects_group_by_metric_and_threshold(mixed):
    _, _, summary = mixed
    quality = [d for d in summary.dropped if d.stage == "quality"]
    assert [(d.label, d.rows) for d in quality] == [("quality: dnsmos_ovrl < 3", 2)]
    assert quality[0].hours == pytest.approx(4.0 / 3600)
    assert summary.rejects == _read(Path(summary.output) / "rejects").num_rows


@pytest.mark.slow  # a Prefect server
def test_flow_task_publishes_the_report_as_an_artifact(mixed, prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.prepare import publish_report

    output, _, summary = mixed

    @flow
    def report_only(target: str) -> dict:
        return publish_report(target)

    async def artifact() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["voxmill-report"])),
                sort=ArtifactSort.CREATED_DESC)  # the latest: the session's Prefect server holds other runs' too
        return found[0].data

    published = report_only(str(output))
    markdown = asyncio.run(artifact())
    assert published["samples"] == summary.samples and published["report"] == summary.report
    assert f"| samples | {summary.samples} |" in markdown
    assert "| quality: dnsmos_ovrl < 3 | 2 |" in markdown
    assert f"| DNSMOS overall | {summary.scores['dnsmos_ovrl'].count} |" in markdown


def test_report_on_s3(finished_job):
    """The same report through s3fs against moto's server: read, copied and committed by URL."""
    import s3fs
    from moto.server import ThreadedMotoServer

    from tests.conftest import S3_PORT

    config, job = finished_job
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT)
    server.start()
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": f"http://127.0.0.1:{S3_PORT}"})
        fs.mkdir("reports")
        fs.put(f"{config.output}/", "reports/out", recursive=True)
        summary = report.write_report("s3://reports/out", samples=4)
        fs.invalidate_cache()
        written = {p.split("reports/out/report/", 1)[1] for p in fs.find("reports/out/report")}
        page = fs.cat_file("reports/out/report/index.html").decode()
    finally:
        server.stop()
    assert summary.samples == job["counts"]["samples"] and summary.report == "s3://reports/out/report/index.html"
    assert written == {*report.PLOTS, "index.html", "summary.json", *(r.audio for r in summary.sample_rows)}
    assert page.count("<audio ") == len(summary.sample_rows) == 4
