"""Progress as plain lines, for where no progress bar can be drawn: a stderr that is no terminal
(a RayJob's driver log, `kubectl logs`, nohup, CI) and Prefect's run log.

`ProgressLines` is a `ProgressFn` (the executor calls it when its workers are up and as each unit
finishes) and, while entered, a ticker thread that writes one line every `interval` seconds from
the first call on: a long unit finishes rarely, but the log still says the job is alive, how far
it is and when it should end. Speed counts only this run's audio (units resumed from an earlier
run are done, not fast), so the ETA holds for a resumed job too. Until a unit has finished there
is no speed: the ETA is the plan's (`planned_seconds`, its wall time) less the time gone, if given.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("voxmill")


def hms(seconds: float) -> str:
    """`H:MM:SS`, the form the plan prints."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLines:
    """`with ProgressLines(print_line, 30) as progress: run_job(config, progress=progress)`."""

    def __init__(self, write: Callable[[str], None], interval: float, planned_seconds: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.write, self.interval, self.planned, self.clock = write, interval, planned_seconds, clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._state: Optional[tuple[float, float, int, int]] = None  # done s, total s, units done, units total
        self._start: Optional[tuple[float, float]] = None  # (clock, done s) at the first call
        self._written: Optional[tuple] = None  # the state of the last line written

    def __call__(self, done: float, total: float, units_done: int, units_total: int) -> None:
        with self._lock:
            first = self._start is None
            if first:
                self._start = (self.clock(), done)
            self._state = (done, total, units_done, units_total)
        if first:
            self.emit()  # the run has started processing: say so at once, then every interval

    def line(self) -> Optional[str]:
        """`progress: 0.125/0.500 h (25%), 3/12 units, 4.2x realtime, elapsed 0:00:30, ETA 0:01:30`."""
        with self._lock:
            if self._state is None or self._start is None:
                return None
            (done, total, units_done, units_total), (started, done_before) = self._state, self._start
        elapsed = self.clock() - started
        speed = (done - done_before) / elapsed if elapsed > 0 else 0.0
        share = done / total if total else 1.0
        if done >= total:
            eta = "done"
        elif speed > 0:
            eta = hms((total - done) / speed)
        elif self.planned is not None:
            eta = f"~{hms(self.planned - elapsed)} (the plan's; no unit finished yet)"
        else:
            eta = "unknown (no unit finished yet)"
        return (f"progress: {done / 3600:.3f}/{total / 3600:.3f} h ({share:.0%}), {units_done}/{units_total} units, "
                f"{speed:.1f}x realtime, elapsed {hms(elapsed)}, ETA {eta}")

    def emit(self) -> None:
        """Write the current line (nothing before the first call). A line that cannot be written (a
        closed stderr, a log handler failing) is dropped: progress never fails the job."""
        text = self.line()
        if text is None:
            return
        with self._lock:
            self._written = self._state
        try:
            self.write(text)
        except Exception as err:  # noqa: BLE001 - any writer's failure
            log.debug("progress line not written: %s", err)

    def _tick(self) -> None:
        while not self._wake.wait(self.interval):
            self.emit()

    def __enter__(self) -> "ProgressLines":
        self._wake.clear()
        self._thread = threading.Thread(target=self._tick, name="voxmill-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            changed = self._state is not None and self._state != self._written
        if changed:
            self.emit()  # the last units' line, unless the ticker just wrote it
