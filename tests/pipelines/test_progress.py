"""Progress lines where no bar can be drawn: hours done/total, x realtime, ETA, one line every interval."""
from __future__ import annotations

import re
import time

from pipelines.progress import ProgressLines


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_line_counts_this_runs_audio_and_gives_an_eta():
    clock, lines = Clock(), []
    progress = ProgressLines(lines.append, interval=3600, clock=clock)
    progress(1800.0, 7200.0, 1, 4)  # a resumed unit: done, but not this run's speed
    assert lines == ["progress: 0.500/2.000 h (25%), 1/4 units, 0.0x realtime, elapsed 0:00:00, "
                     "ETA unknown (no unit finished yet)"]
    clock.now += 100
    progress(3600.0, 7200.0, 2, 4)  # 1800 s of audio in 100 s: 18x; 3600 s left: 200 s
    assert progress.line() == ("progress: 1.000/2.000 h (50%), 2/4 units, 18.0x realtime, elapsed 0:01:40, "
                               "ETA 0:03:20")
    clock.now += 100  # no unit finished since: slower, later
    assert progress.line().endswith("9.0x realtime, elapsed 0:03:20, ETA 0:06:40")
    progress(7200.0, 7200.0, 4, 4)
    assert progress.line().endswith("ETA done") and "(100%), 4/4 units" in progress.line()


def test_before_the_first_unit_the_eta_is_the_plans():
    clock, lines = Clock(), []
    progress = ProgressLines(lines.append, interval=3600, planned_seconds=300.0, clock=clock)
    progress(0.0, 3600.0, 0, 2)
    clock.now += 120
    assert progress.line().endswith("0.0x realtime, elapsed 0:02:00, ETA ~0:03:00 (the plan's; no unit finished yet)")
    clock.now += 600  # later than planned: not below zero
    assert progress.line().endswith("ETA ~0:00:00 (the plan's; no unit finished yet)")
    progress(1800.0, 3600.0, 1, 2)  # measured from now on: 1800 s of audio in 720 s
    assert progress.line().endswith("2.5x realtime, elapsed 0:12:00, ETA 0:12:00")


def test_a_line_every_interval_and_the_last_on_exit():
    lines: list[str] = []
    with ProgressLines(lines.append, interval=0.05) as progress:
        time.sleep(0.12)
        assert lines == []  # nothing before the workers are up (the first call)
        progress(0.0, 60.0, 0, 2)
        time.sleep(0.2)
        ticks = len(lines)
        assert ticks >= 3, lines  # the first call's line, then every 0.05 s
        progress(60.0, 60.0, 2, 2)
    assert len(lines) >= ticks + 1
    assert re.match(r"progress: 0\.017/0\.017 h \(100%\), 2/2 units, [\d.]+x realtime, elapsed 0:00:00, ETA done$",
                    lines[-1]), lines[-1]
    count = len(lines)
    time.sleep(0.12)
    assert len(lines) == count  # the ticker stopped with the job


def test_a_line_that_cannot_be_written_fails_nothing():
    def closed(text: str) -> None:
        raise BrokenPipeError("stderr is gone")

    with ProgressLines(closed, interval=0.01) as progress:
        progress(0.0, 60.0, 0, 1)  # in the job's own thread: must not raise
        time.sleep(0.05)
        progress(60.0, 60.0, 1, 1)
