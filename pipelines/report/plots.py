"""The report's PNG plots, drawn on bare Agg figures (no pyplot: no global state, no display)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from pipelines.report.summary import DatasetSummary, Drop, ThroughputPoint, values

PLOTS = {
    "duration.png": "Segment durations",
    "dnsmos.png": "DNSMOS overall",
    "snr.png": "Signal-to-noise ratio",
    "drops.png": "Hours dropped by reason",
    "throughput.png": "Throughput over the run",
}
# (seconds per unit, name): the largest unit under which a span still reads as at least 2 of them
UNITS = ((3600.0, "hours"), (60.0, "minutes"), (1.0, "seconds"))


def _figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(ax, title: str, message: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=16, color="0.4", transform=ax.transAxes)
    ax.set_axis_off()


def histogram_png(found: np.ndarray, title: str, xlabel: str, missing: str = "not scored") -> bytes:
    figure, ax = _figure()
    if found.size == 0:
        _empty(ax, title, missing)
    else:
        ax.hist(found, bins=min(40, max(5, int(np.sqrt(found.size)) * 2)), color="#3b6ea5", edgecolor="white")
        ax.set(title=f"{title} (n={found.size})", xlabel=xlabel, ylabel="samples")
    return _png(figure)


def drops_png(found: list[Drop]) -> bytes:
    figure, ax = _figure()
    if not found:
        _empty(ax, PLOTS["drops.png"], "nothing dropped")
    else:
        labels = [d.label for d in found][::-1]
        hours = [d.hours for d in found][::-1]
        bars = ax.barh(labels, hours, height=0.6, color="#c0504d")
        ax.bar_label(bars, labels=[f"{d.rows} rows" for d in found][::-1], padding=3, fontsize=8)
        ax.set(title=PLOTS["drops.png"], xlabel="hours")
        ax.margins(x=0.15)
        ax.tick_params(axis="y", labelsize=8)
    return _png(figure)


def unit_for(seconds: float) -> tuple[float, str]:
    """The unit a span of `seconds` reads best in: a 5 s run in seconds, not 0.0014 hours."""
    return next(((size, name) for size, name in UNITS if seconds >= 2 * size), UNITS[-1])


def throughput_png(points: list[ThroughputPoint]) -> bytes:
    """Cumulative input and kept audio against time since the first point, each in the unit its
    span reads best in, as lines between the unit finishes (work goes on between them): a run of
    seconds or of one unit draws a slope from zero, not a step at the edge of an empty axis."""
    figure, ax = _figure()
    if not points:
        _empty(ax, PLOTS["throughput.png"], "no unit finish times in the ledger")
        return _png(figure)
    start = points[0].at
    elapsed = np.array([(p.at - start).total_seconds() for p in points])
    audio = np.array([[p.input_hours, p.output_hours] for p in points]) * 3600
    if points[0].input_hours > 0:  # no run start known: the first finish, from zero
        elapsed, audio = np.concatenate([[0.0], elapsed]), np.vstack([[0.0, 0.0], audio])
    (x_size, x_unit), (y_size, y_unit) = unit_for(elapsed[-1]), unit_for(audio.max())
    ax.plot(elapsed / x_size, audio[:, 0] / y_size, marker="o", markersize=3, label="input")
    ax.plot(elapsed / x_size, audio[:, 1] / y_size, marker="o", markersize=3, label="kept")
    ax.set_xlim(0, max(elapsed[-1] / x_size, 1.0) * 1.02)
    ax.set_ylim(0, max(audio.max() / y_size, 1.0) * 1.05)
    rate = f": {audio[-1, 0] / elapsed[-1]:.3g}x real time" if elapsed[-1] > 0 else ""
    ax.set(title=PLOTS["throughput.png"] + rate, xlabel=f"{x_unit} since {start:%Y-%m-%d %H:%M:%S} UTC",
           ylabel=f"audio done ({y_unit})")
    ax.legend(loc="upper left")
    return _png(figure)


def plots(summary: DatasetSummary, index: pa.Table) -> dict[str, bytes]:
    """PNG bytes by file name."""
    return {
        "duration.png": histogram_png(values(index, "duration"), PLOTS["duration.png"], "seconds", "no samples"),
        "dnsmos.png": histogram_png(values(index, "dnsmos_ovrl"), PLOTS["dnsmos.png"], "DNSMOS OVRL (1-5)",
                                    "dnsmos_ovrl: not scored"),
        "snr.png": histogram_png(values(index, "snr_db"), PLOTS["snr.png"], "dB", "snr_db: not scored"),
        "drops.png": drops_png(summary.dropped),
        "throughput.png": throughput_png(summary.throughput),
    }
