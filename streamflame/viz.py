"""Fan charts (matplotlib, Agg): history + forecast mean and quantile bands.

Shared by `streamflame demo` and `streamflame plot`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

BANDS = (("0.1", "0.9", 0.25), ("0.2", "0.8", 0.35), ("0.3", "0.7", 0.45))
"""(lower level, upper level, opacity) of the shaded bands, outermost first."""


def fan_chart(ax: Any, hist_x: Sequence, hist_y: Sequence, fc_x: Sequence, mean: Sequence,
              quantiles: Mapping[str, Sequence], title: str = "", actual_x: Sequence | None = None,
              actual_y: Sequence | None = None) -> None:
    """Draw one fan chart on ``ax``: observed history (black), the forecast mean (red)
    and the quantile bands present in ``quantiles`` (keys ``"0.1"`` ... ``"0.9"``);
    ``actual_*``: what was observed over the forecast window, when known (grey)."""
    ax.plot(hist_x, np.asarray(hist_y, dtype=float), color="black", lw=1, label="observed")
    for lo, hi, alpha in BANDS:
        if lo in quantiles and hi in quantiles:
            ax.fill_between(fc_x, np.asarray(quantiles[lo], dtype=float), np.asarray(quantiles[hi], dtype=float),
                            color="tab:orange", alpha=alpha, lw=0, label=f"{lo}-{hi}")
    if actual_x is not None and actual_y is not None and len(actual_x):
        ax.plot(actual_x, np.asarray(actual_y, dtype=float), color="0.5", lw=1, label="actual")
    ax.plot(fc_x, np.asarray(mean, dtype=float), color="tab:red", lw=1, label="forecast mean")
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
    if any(not _is_numeric(p["fc_x"]) for p in panels):
        fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _is_numeric(x: Sequence) -> bool:
    return np.asarray(x).dtype.kind in "iuf"
