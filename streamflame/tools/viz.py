"""Fan charts (matplotlib, Agg): history + forecast mean and quantile bands.

Shared by `streamflame demo` and `streamflame plot`. x values are times (numpy
datetime64, pandas timestamps; time-zone aware ones are drawn in their own wall time) or
plain numbers; a line is broken wherever a value is missing (NaN) or the x values jump by
more than one grid step (the smallest step between them), never joined across a gap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

BANDS = (("0.1", "0.9", 0.25), ("0.2", "0.8", 0.35), ("0.3", "0.7", 0.45))
"""(lower level, upper level, opacity) of the shaded bands, outermost first."""


def with_breaks(x: Sequence, y: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as an array (times as datetime64) and ``y`` as floats, with a NaN point
    inserted inside every jump of ``x`` larger than 1.5 grid steps (the smallest positive
    step), so that a line plot shows a break there instead of a straight line."""
    xs, ys = _as_x(x), np.asarray(y, dtype=float)
    if len(xs) < 3:
        return xs, ys
    d = np.diff(xs)
    zero = np.zeros((), dtype=d.dtype)
    steps = d[d > zero]
    if not len(steps):
        return xs, ys
    step = steps.min()
    jumps = np.flatnonzero(d > step + step // 2 if d.dtype.kind == "m" else d > 1.5 * step)
    if not len(jumps):
        return xs, ys
    mid = xs[jumps] + d[jumps] // 2 if d.dtype.kind == "m" else xs[jumps] + d[jumps] / 2
    return np.insert(xs, jumps + 1, mid), np.insert(ys, jumps + 1, np.nan)


def _as_x(x: Sequence) -> np.ndarray:
    """Times as tz-naive datetime64 (aware ones in their own wall time), numbers as they are."""
    import pandas as pd

    if isinstance(x, pd.Series):
        x = x.to_numpy() if x.dt.tz is None else pd.DatetimeIndex(x)
    if isinstance(x, pd.DatetimeIndex):
        return (x.tz_localize(None) if x.tz is not None else x).to_numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "O" and len(arr) and isinstance(arr[0], pd.Timestamp):
        return _as_x(pd.DatetimeIndex(arr))
    return arr


def fan_chart(ax: Any, hist_x: Sequence, hist_y: Sequence, fc_x: Sequence, mean: Sequence,
              quantiles: Mapping[str, Sequence], title: str = "", actual_x: Sequence | None = None,
              actual_y: Sequence | None = None) -> None:
    """Draw one fan chart on ``ax``: observed history (black), the forecast mean (red)
    and the quantile bands present in ``quantiles`` (keys ``"0.1"`` ... ``"0.9"``);
    ``actual_*``: what was observed over the forecast window, when known (grey)."""
    ax.plot(*with_breaks(hist_x, hist_y), color="black", lw=1, label="observed")
    for lo, hi, alpha in BANDS:
        if lo in quantiles and hi in quantiles:
            ax.fill_between(_as_x(fc_x), np.asarray(quantiles[lo], dtype=float), np.asarray(quantiles[hi], dtype=float),
                            color="tab:orange", alpha=alpha, lw=0, label=f"{lo}-{hi}")
    if actual_x is not None and actual_y is not None and len(actual_x):
        ax.plot(*with_breaks(actual_x, actual_y), color="0.5", lw=1, label="actual")
    ax.plot(_as_x(fc_x), np.asarray(mean, dtype=float), color="tab:red", lw=1, label="forecast mean")
    if np.asarray(_as_x(fc_x)).dtype.kind == "M":
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)


def save_fan_charts(panels: list[dict], path: str | Path, dpi: int = 90) -> Path:
    """One fan chart per dict of :func:`fan_chart` keyword arguments, stacked; written as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * max(1, len(panels))), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        fan_chart(ax, **panel)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
