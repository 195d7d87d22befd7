"""Many series in memory, pandas in and out: :class:`SeriesForecaster`.

No Kafka, no Redis: one :class:`~streamflame.Forecaster` and a dict of per-series
states. ``update_df`` takes a long DataFrame (``series_id, timestamp, value``, any
order, several series, gaps allowed) and can be called again with newer rows
(streaming); ``predict_df`` returns one row per series and future step with the
forecast mean and quantile columns (``"0.1"`` … ``"0.9"``, as Chronos' ``predict_df``).

Each series is put on a regular grid (the step is ``freq`` or inferred from its
first rows, as the file loader does): duplicates are averaged, missing grid points
are NaN (the model treats NaN as missing). Complete patches of 48 grid points are
applied to all series together with ``Forecaster.update_many``, the forecasts come
from one ``forecast_many``; the numbers equal the single-series ``update`` /
``forecast`` calls with the seed ``forecast_seed(seed, series_id, n_obs)``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from streamflame.core.constants import DEFAULT_QUANTILES
from streamflame.core.frequency import format_level
from streamflame.data.loader import ID_COLUMNS, TIME_COLUMNS, VALUE_COLUMNS, parse_timestamps
from streamflame.data.series import parse_freq, to_grid
from streamflame.data.times import epoch_ns, from_epoch_ns, step_ns, timestamp_ns
from streamflame.messages import forecast_seed

__all__ = ["SeriesForecaster"]



@dataclass
class _Track:
    step: int                        # grid step, ns
    next_ns: int                     # time of the next grid point not yet fed (ns; UTC when tz-aware)
    tz: object
    state: object                    # SeriesState, whole patches only
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0))   # grid values not yet in a patch


class SeriesForecaster:
    """In-memory multi-series forecasting with a :class:`~streamflame.Forecaster`.

    Args:
        forecaster: the model (``Forecaster.load()`` for the shipped checkpoint).
        freq: grid step of every series (``"10min"``, ``"h"``, a Timedelta); None =
            inferred per series from its first rows (at least 2 distinct timestamps).
        scale: the model's sampling-rate scale factor for new series (see docs/configuration.md).
    """

    def __init__(self, forecaster, *, freq=None, scale: float = 1.0):
        self.forecaster = forecaster
        self.freq = None if freq is None else parse_freq(freq)
        if self.freq is not None and not isinstance(self.freq, pd.tseries.offsets.Tick):
            raise ValueError(f"freq must be a fixed step (e.g. '10min', 'h', 'D'), got {freq!r}")
        self.scale = float(scale)
        self._tracks: dict[str, _Track] = {}
        self._waiting: dict[str, tuple[pd.DatetimeIndex, np.ndarray]] = {}  # too few rows to infer a step

    @property
    def series_ids(self) -> list[str]:
        return list(self._tracks) + [s for s in self._waiting if s not in self._tracks]

    # ---- input ---------------------------------------------------------------------------
    def update_df(self, df: pd.DataFrame) -> "SeriesForecaster":
        """Feed new observations: a long DataFrame with an id, a time and a value column
        (``series_id``/``item_id``/``unique_id``/``id``, ``timestamp``/``ds``/..., ``value``/
        ``target``/``y``). Rows at or before a series' last grid point already fed are
        dropped with a warning. Returns self."""
        if df.empty:
            return self
        cols = {str(c).strip().lower(): c for c in df.columns}
        id_col, time_col, value_col = (next((cols[n] for n in names if n in cols), None)
                                       for names in (ID_COLUMNS, TIME_COLUMNS, VALUE_COLUMNS))
        if id_col is None or time_col is None or value_col is None:
            raise ValueError("update_df needs columns series_id, timestamp and value "
                             f"(found: {', '.join(map(str, df.columns))})")
        times = parse_timestamps(df[time_col], where=f"column {time_col!r}")
        values = pd.to_numeric(df[value_col], errors="raise").to_numpy(dtype=np.float64)
        if np.isinf(values).any():
            raise ValueError("values must be finite or NaN (missing)")
        ids = df[id_col].astype(str).to_numpy()
        codes, uniques = pd.factorize(ids, sort=False)
        dropped: dict[str, int] = {}
        for j, sid in enumerate(uniques):
            rows = np.flatnonzero(codes == j)
            n = self._add(sid, times[rows], values[rows])
            if n:
                dropped[sid] = n
        if dropped:
            warnings.warn(f"dropped observations at or before the last grid point already fed: {dropped}",
                          stacklevel=2)
        self._apply_patches()
        return self

    def _add(self, sid: str, t: pd.DatetimeIndex, v: np.ndarray) -> int:
        tr = self._tracks.get(sid)
        if tr is None:
            if sid in self._waiting:
                t0, v0 = self._waiting.pop(sid)
                t, v = t0.append(t), np.concatenate([v0, v])
            if self.freq is None and len(t.unique()) < 2:
                self._waiting[sid] = (t, v)  # one distinct timestamp: no step to infer yet
                return 0
            start, freq, grid = to_grid(t, v, self.freq)
            if not isinstance(freq, pd.tseries.offsets.Tick):
                raise ValueError(f"series {sid!r}: inferred frequency {freq.freqstr} has no fixed step; pass freq=")
            step = step_ns(freq)
            self._tracks[sid] = _Track(step, timestamp_ns(start) + len(grid) * step, t.tz,
                                       self.forecaster.init_state(self.scale, step_seconds=step / 1e9), grid)
            return 0
        if (t.tz is None) != (tr.tz is None):
            raise ValueError(f"series {sid!r}: timestamps mix naive and time-zone-aware values across calls")
        k = np.floor((epoch_ns(t) - tr.next_ns) / tr.step + 0.5).astype(np.int64)
        late = k < 0
        k, v = k[~late], v[~late]
        if len(k):
            finite = ~np.isnan(v)
            n = int(k.max()) + 1
            sums = np.bincount(k[finite], weights=v[finite], minlength=n)
            counts = np.bincount(k[finite], minlength=n)
            with np.errstate(invalid="ignore", divide="ignore"):
                grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            tr.pending = np.concatenate([tr.pending, grid])
            tr.next_ns += n * tr.step
        return int(late.sum())

    def _apply_patches(self) -> None:
        p = self.forecaster.config.patch_len
        while True:
            ready = [tr for tr in self._tracks.values() if len(tr.pending) >= p]
            if not ready:
                return
            new = self.forecaster.update_many([tr.state for tr in ready], np.stack([tr.pending[:p] for tr in ready]))
            for tr, s in zip(ready, new):
                tr.state, tr.pending = s, tr.pending[p:]

    # ---- output --------------------------------------------------------------------------
    def predict_df(self, horizon: int, quantiles=DEFAULT_QUANTILES, *, num_samples: int = 100, seed: int = 0,
                   series_ids: list[str] | None = None) -> pd.DataFrame:
        """Forecast ``horizon`` grid steps after each series' last grid point fed.

        Returns columns ``series_id, timestamp, mean`` and one per quantile level
        (``format_level``: ``"0.1"``, ``"0.05"``), one row per series and step. Series
        with fewer than one patch (48 grid points) fed are left out with a warning."""
        f = self.forecaster
        wanted = self.series_ids if series_ids is None else list(series_ids)
        unknown = [s for s in wanted if s not in self._tracks and s not in self._waiting]
        if unknown:
            raise KeyError(f"unknown series: {unknown[:5]}")
        short = [s for s in wanted if s not in self._tracks or self._tracks[s].state.n_patches < 1]
        if short:
            warnings.warn(f"{len(short)} series have fewer than {f.config.patch_len} grid points and get no "
                          f"forecast: {short[:5]}", stacklevel=2)
        sids = [s for s in wanted if s not in short]
        levels = tuple(float(q) for q in quantiles)
        columns = ["series_id", "timestamp", "mean", *[format_level(q) for q in levels]]
        if not sids:
            return pd.DataFrame(columns=columns)
        states, seeds = [], []
        for sid in sids:
            tr = self._tracks[sid]
            st = f.update(tr.state, tr.pending) if len(tr.pending) else tr.state   # < 1 patch: buffered only
            states.append(st)
            seeds.append(forecast_seed(seed, sid, st.n_obs))
        fcs = f.forecast_many(states, horizon, levels, num_samples, seeds)
        parts = []
        for sid, fc in zip(sids, fcs):
            tr = self._tracks[sid]
            ns = tr.next_ns + tr.step * np.arange(horizon, dtype=np.int64)
            ts = from_epoch_ns(ns, tr.tz)
            part = {"series_id": sid, "timestamp": ts, "mean": fc.mean.astype(np.float64)}
            part.update({format_level(q): fc.quantiles[i].astype(np.float64) for i, q in enumerate(levels)})
            parts.append(pd.DataFrame(part))
        return pd.concat(parts, ignore_index=True)[columns]
