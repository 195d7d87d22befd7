"""Score forecast tables in the eval contract format against the data they forecast.

A forecast table has one row per (series, window, step) with columns
``series_id, origin, step, mean, q0.1, ..., q0.9`` (see docs/evaluation.md). The target of a
row is the series' grid value at ``origin + step * freq``; the history of a window is the
grid up to and including ``origin``. Every model is compared to the seasonal naive forecast
(:func:`streamflame.eval.baselines.seasonal_naive`) made at exactly the same origins, on
exactly the same non-NaN targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.series import Series, seasonality
from ..data.times import epoch_ns
from .baselines import seasonal_naive
from .metrics import PATCH_STEPS, QUANTILES, boundary_jump, geometric_mean_ratio, jump_ratio, seasonal_errors_at

QUANTILE_COLUMNS = tuple(f"q{q:g}" for q in QUANTILES)
CONTRACT_COLUMNS = ("series_id", "origin", "step", "mean") + QUANTILE_COLUMNS
REFERENCE = "seasonal_naive"


class ForecastFileError(ValueError):
    """A forecast table does not follow the contract or does not match the data."""


@dataclass
class Scores:
    per_series: pd.DataFrame  # one row per (model, series)
    summary: pd.DataFrame     # one row per model


def check_contract(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Validate the contract columns (extra columns are ignored) and types."""
    missing = [c for c in CONTRACT_COLUMNS if c not in df.columns]
    if missing:
        raise ForecastFileError(f"{name}: missing column(s) {', '.join(missing)}; "
                                f"expected {', '.join(CONTRACT_COLUMNS)}")
    out = df.loc[:, list(CONTRACT_COLUMNS)].copy()
    out["series_id"] = out["series_id"].astype(str)
    out["origin"] = out["origin"].astype(str)
    step = pd.to_numeric(out["step"], errors="coerce")
    if step.isna().any() or (step < 1).any() or (step != np.floor(step)).any():
        raise ForecastFileError(f"{name}: column 'step' must hold integers >= 1")
    out["step"] = step.astype(np.int64)
    for col in ("mean",) + QUANTILE_COLUMNS:
        out[col] = pd.to_numeric(out[col], errors="coerce")
        if out[col].isna().any():
            row = int(np.flatnonzero(out[col].isna().to_numpy())[0])
            raise ForecastFileError(f"{name}: column {col!r} has a missing or non-numeric value at row {row}")
    return out


def _wall_clock_ns(s: Series) -> np.ndarray:
    """Local wall-clock time of every grid point as int64 ns (what the contract's origin shows)."""
    ts = s.timestamps()
    return epoch_ns(ts.tz_localize(None) if ts.tz is not None else ts)


def origin_lengths(df: pd.DataFrame, series: dict[str, Series], name: str) -> np.ndarray:
    """History length ``L`` (origin grid index + 1) of every row; raises on unknown series/origins.

    Origins are local wall-clock times without an offset; in the repeated hour of a DST
    fall-back a wall-clock time is ambiguous and the later grid point is taken.
    """
    lengths = np.empty(len(df), dtype=np.int64)
    for sid, rows in df.groupby("series_id", sort=False).indices.items():
        s = series.get(sid)
        if s is None:
            raise ForecastFileError(f"{name}: series {sid!r} is not in the data")
        origins = df["origin"].to_numpy()[rows]
        uniq, inverse = np.unique(origins, return_inverse=True)
        try:
            parsed = pd.DatetimeIndex(pd.to_datetime(pd.Series(uniq), format="ISO8601"))
        except (ValueError, TypeError) as exc:
            raise ForecastFileError(f"{name}: series {sid!r}: unparseable origin ({exc})") from exc
        if parsed.tz is not None:  # tolerate an explicit offset: convert to the data's zone
            parsed = parsed.tz_convert(s.tz).tz_localize(None) if s.tz is not None else parsed.tz_localize(None)
        index_of = pd.Series(np.arange(len(s), dtype=np.float64), index=_wall_clock_ns(s))
        if not index_of.index.is_unique:
            index_of = index_of.groupby(level=0).last()
        pos = index_of.reindex(epoch_ns(parsed)).to_numpy()
        if np.isnan(pos).any():
            bad = uniq[int(np.flatnonzero(np.isnan(pos))[0])]
            raise ForecastFileError(f"{name}: series {sid!r}: origin {bad!r} is not a timestamp of the "
                                    f"series' grid (start {s.start}, step {s.freq.freqstr})")
        lengths[rows] = pos.astype(np.int64)[inverse] + 1
    return lengths


def _row_metrics(df: pd.DataFrame, lengths: np.ndarray, series: dict[str, Series]) -> pd.DataFrame:
    """Per-row target, summed quantile loss, |error of the median| and 80 % coverage."""
    y = np.full(len(df), np.nan)
    for sid, rows in df.groupby("series_id", sort=False).indices.items():
        v = series[sid].values
        target = lengths[rows] - 1 + df["step"].to_numpy()[rows]
        ok = target < len(v)
        y[rows[ok]] = v[target[ok]]
    q = df.loc[:, list(QUANTILE_COLUMNS)].to_numpy(dtype=np.float64)  # (N, Q)
    diff = y[:, None] - q
    tau = np.asarray(QUANTILES)[None, :]
    ql = 2.0 * np.abs(diff * ((diff <= 0).astype(np.float64) - tau)).sum(axis=1)
    median = df[f"q{0.5:g}"].to_numpy(dtype=np.float64)
    return pd.DataFrame({
        "series_id": df["series_id"].to_numpy(), "L": lengths, "step": df["step"].to_numpy(), "y": y,
        "ql": ql, "abs_err": np.abs(y - median), "median": median,
        "mean": df["mean"].to_numpy(dtype=np.float64), "lo": q[:, 0], "hi": q[:, -1],
        "covered": ((y >= q[:, 0]) & (y <= q[:, -1])).astype(np.float64),
    })


def reference_forecasts(keys: pd.DataFrame, series: dict[str, Series], horizon: int) -> pd.DataFrame:
    """Seasonal naive forecasts in contract form for the (series_id, L) pairs in ``keys``."""
    parts = []
    for (sid, length), _ in keys.groupby(["series_id", "L"], sort=False):
        s = series[sid]
        mean, q = seasonal_naive(s.values[:length], horizon, seasonality(s.freq))
        part = {"series_id": sid, "L": length, "step": np.arange(1, horizon + 1), "mean": mean}
        part.update({c: q[i] for i, c in enumerate(QUANTILE_COLUMNS)})
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def score(series: list[Series], forecasts: dict[str, pd.DataFrame], reference: str = REFERENCE) -> Scores:
    """Score every model's forecast table; ratios are to the seasonal naive reference.

    Args:
        series: the data (regular-grid series).
        forecasts: model name -> table in the contract format.
        reference: name given to the internally computed seasonal naive reference.

    Per series: WQL pooled over its windows, the WQL ratio (= ratio of summed quantile
    losses, as the target weights are identical), MASE (mean over windows of the window
    MASE) and its ratio, 80 % coverage. Summary per model: pooled WQL over all series,
    the geometric means over series of both ratios, mean coverage over series.
    """
    by_id = {s.series_id: s for s in series}
    tables, lengths = {}, {}
    for name, df in forecasts.items():
        tables[name] = check_contract(df, name)
        lengths[name] = origin_lengths(tables[name], by_id, name)
    if not tables:
        raise ForecastFileError("nothing to score")
    keys = pd.concat([pd.DataFrame({"series_id": t["series_id"].to_numpy(), "L": lengths[n]})
                      for n, t in tables.items()]).drop_duplicates()
    horizon = int(max(t["step"].max() for t in tables.values()))
    ref_table = reference_forecasts(keys, by_id, horizon)
    ref_rows = _row_metrics(ref_table, ref_table["L"].to_numpy(), by_id)

    per_series = []
    models = [n for n in tables if n != reference]
    for name in [reference] + models:
        rows = ref_rows if name == reference else _row_metrics(tables[name], lengths[name], by_id)
        joined = rows.merge(ref_rows[["series_id", "L", "step", "ql", "abs_err"]],
                            on=["series_id", "L", "step"], how="inner", suffixes=("", "_ref"))
        joined = joined[~np.isnan(joined["y"].to_numpy())]
        per_series.append(_per_series(name, joined, by_id))
    per_series = pd.concat(per_series, ignore_index=True)
    summary = pd.DataFrame([_summary(name, per_series[per_series["model"] == name])
                            for name in [reference] + models])
    return Scores(per_series, summary)


def _per_series(name: str, joined: pd.DataFrame, series: dict[str, Series]) -> pd.DataFrame:
    out = []
    for sid, g in joined.groupby("series_id", sort=True):
        s = series[sid]
        windows = g.groupby("L", sort=True)
        lens = np.asarray(list(windows.groups.keys()), dtype=np.int64)
        scale = seasonal_errors_at(s.values, seasonality(s.freq), lens)
        mae = windows["abs_err"].mean().to_numpy()
        mae_ref = windows["abs_err_ref"].mean().to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = scale > 0
            mase = np.nanmean(np.where(ok, mae / scale, np.nan)) if ok.any() else np.nan
            mase_ref = np.nanmean(np.where(ok, mae_ref / scale, np.nan)) if ok.any() else np.nan
        jumps = _path_jumps(g)
        abs_sum = float(np.abs(g["y"].to_numpy()).sum())
        ql, ql_ref = float(g["ql"].sum()), float(g["ql_ref"].sum())
        out.append({
            "model": name, "series_id": sid, "n_windows": int(len(lens)), "n_targets": int(len(g)),
            "abs_target_sum": abs_sum, "ql_sum": ql, "ql_sum_ref": ql_ref,
            "wql": ql / (len(QUANTILES) * abs_sum) if abs_sum > 0 else np.nan,
            "mase": float(mase), "mase_ref": float(mase_ref),
            "coverage_80": float(g["covered"].mean()),
            "jump_ratio": jump_ratio(*jumps["median"]), "jump_ratio_data": jump_ratio(*jumps["y"]),
            "jump_ratio_mean": jump_ratio(*jumps["mean"]),
            "jump_ratio_band": jump_ratio(*(a + b for a, b in zip(jumps["lo"], jumps["hi"]))),
        })
    return pd.DataFrame(out)


def _path_jumps(g: pd.DataFrame) -> dict[str, tuple[float, int, float, int]]:
    """Across-boundary and inside-patch step changes of the median path, the mean path, the 80 %
    band's edges (quantiles 0.1 and 0.9: what a fan chart draws) and the targets, summed over a
    series' windows (steps whose target is missing are left out on every side)."""
    sums = {"median": np.zeros(4), "mean": np.zeros(4), "lo": np.zeros(4), "hi": np.zeros(4), "y": np.zeros(4)}
    for length, w in g.groupby("L", sort=False):
        steps = w["step"].to_numpy()
        order = np.argsort(steps)
        full = np.full(int(steps.max()), np.nan)
        for col in sums:
            path = full.copy()
            path[steps[order] - 1] = w[col].to_numpy()[order]
            sums[col] += boundary_jump(path, int(length))
    return {k: (float(v[0]), int(v[1]), float(v[2]), int(v[3])) for k, v in sums.items()}


def _summary(name: str, rows: pd.DataFrame) -> dict:
    wql_ratio = geometric_mean_ratio(rows["ql_sum"].to_numpy(), rows["ql_sum_ref"].to_numpy())
    mase_ratio = geometric_mean_ratio(rows["mase"].to_numpy(), rows["mase_ref"].to_numpy())
    abs_total = rows["abs_target_sum"].sum()
    return {
        "model": name,
        "wql": float(rows["ql_sum"].sum() / (len(QUANTILES) * abs_total)) if abs_total > 0 else np.nan,
        "wql_ratio": wql_ratio.value,
        "mase_ratio": mase_ratio.value,
        "coverage_80": float(rows["coverage_80"].mean()) if len(rows) else np.nan,
        # geometric mean over series of the median path's boundary/inside step-change ratio, and of the data's
        "jump_ratio": _geo(rows["jump_ratio"]), "jump_ratio_data": _geo(rows["jump_ratio_data"]),
        "jump_ratio_mean": _geo(rows["jump_ratio_mean"]), "jump_ratio_band": _geo(rows["jump_ratio_band"]),
        "n_series": int(len(rows)),
        "n_targets": int(rows["n_targets"].sum()),
        "n_excluded_wql": wql_ratio.n_excluded,
        "n_excluded_mase": mase_ratio.n_excluded,
    }


def _geo(values: pd.Series) -> float:
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.mean(np.log(v)))) if v.size else float("nan")


def format_summary(summary: pd.DataFrame) -> str:
    """A plain-text table of the summary (one line per model)."""
    jumps = "jump_ratio" in summary and summary["jump_ratio"].notna().any()
    w = max([18, *(len(str(m)) for m in summary["model"])])
    head = (f"{'model':<{w}} {'WQL':>8} {'WQL ratio':>10} {'MASE ratio':>11} {'cov80':>7}"
            + (f" {'jumps':>6}" if jumps else "") + f" {'series':>7} {'targets':>9}")
    lines = [head, "-" * len(head)]
    for r in summary.itertuples():
        lines.append(f"{r.model:<{w}} {r.wql:8.4f} {r.wql_ratio:10.4f} {r.mase_ratio:11.4f} "
                     f"{r.coverage_80:7.3f}" + (f" {r.jump_ratio:6.2f}" if jumps else "")
                     + f" {r.n_series:7d} {r.n_targets:9d}")
    if jumps:
        lines.append(f"jumps: the median path's mean |step change| across {PATCH_STEPS}-step patch boundaries over "
                     f"its mean inside patches (geometric mean over series); the targets themselves: "
                     f"{summary['jump_ratio_data'].iloc[0]:.2f}")
        lines.append("the same for the mean path / the 80 % band's edges (0.1 and 0.9 quantiles): "
                     + ", ".join(f"{r.model} {r.jump_ratio_mean:.2f} / {r.jump_ratio_band:.2f}"
                                 for r in summary.itertuples()))
    return "\n".join(lines)
