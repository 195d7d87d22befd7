"""Reference forecasters for `streamflame eval`: seasonal naive, AutoETS and fracast.

Every baseline maps a batch of histories to the contract's outputs::

    predict(contexts: list[np.ndarray (T_i,)], horizon: int, seasons: list[int])
        -> (mean (B, H), quantiles (B, 9, H))   # rows of quantiles at levels 0.1 ... 0.9

Histories are the series' regular grid up to the forecast origin (NaN = missing). The
seasonal naive forecast is also the reference every metric ratio is taken against.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .metrics import QUANTILES


def _fill_nan(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN; leading/trailing NaN take the nearest observed value."""
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    if ok.all() or not ok.any():
        return x.copy()
    idx = np.arange(len(x))
    return np.interp(idx, idx[ok], x[ok])


# ----------------------------------------------------------------------------- seasonal naive

def seasonal_naive_point(history: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """``yhat_{T+h} = y_{T+h-k*m}`` with the smallest ``k >= ceil(h/m)`` whose value is observed.

    When none of those seasons is observed the last observed value is used; all-NaN history
    gives NaN. Shape (horizon,).
    """
    y = np.asarray(history, dtype=np.float64)
    n = len(y)
    m = max(1, int(m))
    out = np.full(horizon, np.nan)
    finite = np.flatnonzero(~np.isnan(y))
    if finite.size == 0:
        return out
    last = y[finite[-1]]
    for h in range(1, horizon + 1):
        idx = n + h - 1 - m * math.ceil(h / m)
        while idx >= 0 and np.isnan(y[idx]):
            idx -= m
        out[h - 1] = y[idx] if idx >= 0 else last
    return out


def seasonal_naive(history: np.ndarray, horizon: int, m: int, levels=QUANTILES, max_context: int = 4096
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Seasonal naive point forecast plus empirical quantiles of its in-sample errors.

    For step ``h`` the forecast reaches back ``k = ceil(h/m)`` seasons, so its error
    quantiles are those of the in-sample differences ``y_s - y_{s-k*m}`` over the last
    ``max_context`` points (pairs with both values observed). Without any such pair the
    interval collapses to the point.

    Returns ``(mean (H,), quantiles (Q, H))``.
    """
    y = np.asarray(history, dtype=np.float64)[-max_context:]
    m = max(1, int(m))
    point = seasonal_naive_point(np.asarray(history, dtype=np.float64), horizon, m)
    quantiles = np.repeat(point[None, :], len(levels), axis=0)
    steps = np.arange(1, horizon + 1)
    ks = np.ceil(steps / m).astype(int)
    for k in np.unique(ks):
        lag = int(k) * m
        if lag >= len(y):
            continue
        d = y[lag:] - y[:-lag]
        d = d[~np.isnan(d)]
        if d.size == 0:
            continue
        offsets = np.quantile(d, levels)
        sel = ks == k
        quantiles[:, sel] = point[None, sel] + offsets[:, None]
    return point, quantiles


class SeasonalNaive:
    """Seasonal naive with empirical residual quantiles (also the metric reference)."""

    name = "seasonal_naive"

    def predict(self, contexts, horizon, seasons):
        out = [seasonal_naive(c, horizon, m) for c, m in zip(contexts, seasons)]
        return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


# ----------------------------------------------------------------------------- AutoETS

ETS_MAX_SEASON = 168     # longer seasons make statsforecast's ETS far too slow (m=288: ~15 s per fit)
ETS_CONTEXT = 1024       # points of history given to ETS (at least 3 seasons for MSTL)


class AutoETS:
    """statsforecast AutoETS with prediction-interval quantiles.

    * Season length ``m`` from the frequency (gluonts table). ETS is seasonal when
      ``m <= 168`` (up to 10-min data with a daily season) and the context holds at least
      two seasons; for longer seasons (5-min, 1-min data) statsforecast's ETS takes
      ~15 s per fit or more, so the daily season is removed with statsforecast's MSTL and
      the remainder forecast by AutoETS (``MSTL(trend_forecaster=AutoETS)``), which is
      statsforecast's own recipe for long seasons.
    * Additive error only (``AZZ`` / ``AZN``): sensor data has zeros and negative values, and
      multiplicative-error fits gave exploding intervals on count data.
    * Context: the last ``max(1024, 3 m)`` points, NaN linearly interpolated.
    * Quantiles: ``q0.5`` = the mean; ``q0.1..q0.4`` / ``q0.6..q0.9`` = lower/upper bounds
      of the 80/60/40/20 % prediction intervals.
    * A fit that fails (tiny or constant history) falls back to non-seasonal ETS, then to
      the seasonal naive forecast; ``fallbacks`` counts those.
    """

    name = "autoets"

    def __init__(self):
        self.fallbacks = 0

    def _one(self, history: np.ndarray, horizon: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        from statsforecast.models import MSTL
        from statsforecast.models import AutoETS as _AutoETS

        y = _fill_nan(np.asarray(history, dtype=np.float64)[-max(ETS_CONTEXT, 3 * m):])
        y = y[~np.isnan(y)]
        attempts = []
        if m > 1 and len(y) >= 2 * m + 10:
            if m <= ETS_MAX_SEASON:
                attempts.append(lambda: _AutoETS(season_length=m, model="AZZ"))
            else:
                attempts.append(lambda: MSTL(season_length=m, trend_forecaster=_AutoETS(model="AZN")))
        attempts.append(lambda: _AutoETS(season_length=1, model="AZN"))
        levels = [20, 40, 60, 80]
        for make in attempts:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = make().forecast(y=y, h=horizon, level=levels)
            except Exception:  # statsforecast raises bare ValueErrors/NotImplementedErrors on tiny data
                continue
            mean = np.asarray(res["mean"], dtype=np.float64)
            rows = [res[f"lo-{lv}"] for lv in reversed(levels)] + [mean] + [res[f"hi-{lv}"] for lv in levels]
            q = np.asarray(rows, dtype=np.float64)
            if np.isfinite(mean).all() and np.isfinite(q).all():
                if make is not attempts[0]:
                    self.fallbacks += 1
                return mean, q
        self.fallbacks += 1
        return seasonal_naive(history, horizon, m)

    def predict(self, contexts, horizon, seasons):
        out = [self._one(c, horizon, m) for c, m in zip(contexts, seasons)]
        return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


# ----------------------------------------------------------------------------- fracast

class Fracast:
    """The pretrained ``fracast`` model (weights ship in its wheel; nothing is downloaded).

    Context: the last 2048 points, NaN passed through (fracast masks missing values; it
    needs at least 8 observed points, otherwise the seasonal naive forecast is used).
    Its 9 quantile outputs are the levels 0.1 ... 0.9; the mean column is its median.
    """

    name = "fracast"
    context_length = 2048
    batch_size = 128

    def __init__(self):
        from fracast import FracastModel

        self.model = FracastModel.from_pretrained()
        if [round(q, 6) for q in self.model.quantiles] != list(QUANTILES):
            raise RuntimeError(f"fracast quantiles {self.model.quantiles} are not {QUANTILES}")
        self.fallbacks = 0

    min_observed = 8

    def readable(self, context: np.ndarray) -> bool:
        """Whether fracast can read this context: at least 8 observed values in its last 2048."""
        return int(np.isfinite(context[-self.context_length:]).sum()) >= self.min_observed

    def predict(self, contexts, horizon, seasons):
        n = len(contexts)
        mean = np.empty((n, horizon))
        quant = np.empty((n, len(QUANTILES), horizon))
        usable = [i for i, c in enumerate(contexts) if self.readable(c)]
        for i in set(range(n)) - set(usable):
            mean[i], quant[i] = seasonal_naive(contexts[i], horizon, seasons[i])
            self.fallbacks += 1
        for s in range(0, len(usable), self.batch_size):
            idx = usable[s:s + self.batch_size]
            width = max(len(contexts[i][-self.context_length:]) for i in idx)
            batch = np.full((len(idx), width), np.nan, dtype=np.float32)
            for row, i in enumerate(idx):  # left-pad shorter contexts with NaN (= unobserved)
                c = contexts[i][-self.context_length:]
                batch[row, width - len(c):] = c
            out = self.model.forecast_batch(batch, horizon=horizon)  # (B, H, 9)
            for row, i in enumerate(idx):
                quant[i] = np.sort(out[row].T.astype(np.float64), axis=0)
                mean[i] = quant[i][QUANTILES.index(0.5)]
        return mean, quant


BASELINES = {"seasonal_naive": SeasonalNaive, "autoets": AutoETS, "fracast": Fracast}
