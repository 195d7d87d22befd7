"""Seeded synthetic series for pretraining diversity.

Two families, mixed half/half by :func:`generate` and :func:`stream`:

* **KernelSynth-style Gaussian processes**: a random composition (sum/product) of base
  kernels (periodic, RBF, rational quadratic, white noise, constant, linear). Stationary
  sub-compositions are sampled *exactly* by circulant embedding (one FFT of length 2T,
  O(T log T) instead of an O(T^3) Cholesky); a linear kernel enters as an independent random
  line, combined by +/x with the sample of the other operand (same second moments as the
  composed kernel).
* **Sensor-like series**: a daily cycle with harmonics at a random sampling rate (1, 5, 10,
  15, 30 or 60 minutes), weekday/weekend modulation, trend or random walk, level shifts,
  spikes, slow sensor drift, AR(1) and multiplicative noise, and sometimes intermittent
  (zero-inflated counts) or clipped (saturating sensor) output.

Four more families enter only when a config asks for them (``calendar_fraction``,
``weather_fraction``, ``periodic_fraction``, ``intermittent_fraction``; 0 in :data:`DEFAULT`, which
stays the shipped stage-1 mix):

* **Calendar series** (parking, call centres, traffic, footfall): a week is the main cycle,
  with separate weekday and weekend day shapes, per-weekday levels, day-to-day variation,
  holidays, often active only inside opening hours, often counts; sampled at 2 min to 3 h.
  With ``closed_hours_probability`` such a series is *observed* only in its opening hours
  (and sometimes weekdays only): NaN elsewhere, as a grid built from business-hours data.
* **Weather-like series** (temperature, humidity): a daily cycle whose amplitude changes from
  day to day, under synoptic swings of a few days that are larger than the daily cycle, and
  a slow seasonal drift; the daily peak is often not the largest autocorrelation feature.
* **Near-periodic series** (``periodic_fraction``; typical-year weather files, climatological
  curves, scheduled processes, irradiance): one day's shape repeats almost exactly, under slow
  amplitude modulation and level drift, with noise of 0.1-3 % of the cycle's range, sometimes
  zero at night or rounded to a grid. Copying the last period is close to the best forecast
  here, and the model has to learn to trust its seasonal hint that far (docs/model.md).
* **Intermittent series** (``intermittent_fraction``; rain gauges, appliance sub-meters, spiky
  pollution): a floor the series rests on most of the time (zero, or a small noisy base load)
  and bursts drawn by an on/off Markov chain whose switch-on rate follows the time of day:
  rain-like events (skewed amounts, often rounded to a gauge's tip), appliance cycles (a plateau
  near the appliance's rating, with a few cycle shapes reused) or pollution spikes (log-normal
  over a slowly varying base). The best quantiles here sit *at* the floor for most steps.

Any family may then get missing runs (NaN), and every series gets a random level and
scale. Series ``i`` of seed ``s`` depends only on ``(s, i)`` (``numpy.random.SeedSequence``),
so ``generate(n, T, s)[i]`` equals the i-th item of ``stream(T, s)``, and workers can split
indices without coordination.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

STEP_MINUTES = (1, 5, 10, 15, 30, 60)  # sensor sampling rates
CALENDAR_STEP_MINUTES = (2, 5, 10, 15, 20, 30, 60, 120, 180)  # calendar-family sampling rates
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator (defaults are the pretraining mix)."""

    kernel_fraction: float = 0.5       # share of KernelSynth series, the rest sensor-like
    missing_probability: float = 0.3   # share of series that get missing values
    missing_fraction: tuple[float, float] = (0.01, 0.25)  # NaN share of such a series
    max_kernels: int = 5               # base kernels per KernelSynth composition
    calendar_fraction: float = 0.0     # share of calendar series (weekly main cycle), taken first
    weather_fraction: float = 0.0      # share of weather-like series, taken next
    periodic_fraction: float = 0.0     # share of near-periodic series, taken next
    intermittent_fraction: float = 0.0  # share of intermittent (floor + bursts) series, taken next
    closed_hours_probability: float = 0.0  # share of calendar series observed in opening hours only


DEFAULT = SynthConfig()


# ---------------------------------------------------------------- KernelSynth

def _periods(length: int, rng: np.random.Generator) -> float:
    """A period in steps: a day or week at a sensor rate, or a generic fraction of the length."""
    if rng.random() < 0.6:
        per_day = MINUTES_PER_DAY // rng.choice(STEP_MINUTES)
        period = per_day * (7 if rng.random() < 0.25 else 1)
        if period < length / 2:
            return float(period)
    return float(rng.choice([4, 7, 12, 24, 48, 96, 168, 288]) if rng.random() < 0.5
                 else np.exp(rng.uniform(np.log(3), np.log(max(4, length / 3)))))


def _base_covariance(kind: str, lags: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Covariance k(lag) of one stationary base kernel on integer lags (unit variance scale)."""
    ell = np.exp(rng.uniform(np.log(2.0), np.log(length)))  # length scale, steps
    if kind == "periodic":
        period = _periods(length, rng)
        ell_p = rng.choice([0.5, 1.0, 2.0])
        return np.exp(-2.0 * np.sin(np.pi * lags / period) ** 2 / ell_p**2)
    if kind == "rbf":
        return np.exp(-0.5 * (lags / ell) ** 2)
    if kind == "rq":
        alpha = rng.choice([0.1, 1.0, 10.0])
        return (1.0 + lags**2 / (2 * alpha * ell**2)) ** (-alpha)
    if kind == "white":
        return np.where(lags == 0, rng.uniform(0.01, 0.3), 0.0)
    if kind == "constant":
        return np.full(lags.shape, rng.uniform(0.1, 1.0))
    raise ValueError(f"unknown kernel {kind!r}")


def sample_stationary(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One zero-mean Gaussian sample with autocovariance ``cov`` (shape (T,), cov[k] = k(lag k)).

    Circulant embedding of size 2T; negative eigenvalues of the embedding (smooth kernels
    with long length scales) are clipped to zero.
    """
    t = cov.shape[0]
    row = np.concatenate([cov, [cov[-1]], cov[:0:-1]])  # symmetric circulant row, length 2T
    eig = np.clip(np.fft.rfft(row).real, 0.0, None)
    m = row.shape[0]
    z = rng.standard_normal(eig.shape[0]) + 1j * rng.standard_normal(eig.shape[0])
    z[0] = z[0].real * np.sqrt(2.0)
    if m % 2 == 0:
        z[-1] = z[-1].real * np.sqrt(2.0)
    x = np.fft.irfft(np.sqrt(eig) * z, n=m) * np.sqrt(m / 2.0)
    return x[:t]


def kernel_synth(length: int, rng: np.random.Generator, max_kernels: int = DEFAULT.max_kernels
                 ) -> np.ndarray:
    """One KernelSynth-style series of shape (length,) (zero-mean-ish, unit-ish scale)."""
    kinds = ["periodic", "periodic", "rbf", "rq", "white", "constant", "linear"]
    n_kernels = int(rng.integers(1, max_kernels + 1))
    lags = np.arange(length, dtype=np.float64)
    # Each term is ("cov", autocovariance) while stationary, ("x", sample) once it is not.
    terms = []
    for _ in range(n_kernels):
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "linear":
            t = np.linspace(0.0, 1.0, length)
            terms.append(("x", rng.standard_normal() * (t - rng.uniform(0, 1)) + 0.3 * rng.standard_normal()))
        else:
            terms.append(("cov", _base_covariance(kind, lags, length, rng)))
    acc = terms[0]
    for term in terms[1:]:
        op = "+" if rng.random() < 0.5 else "*"
        if acc[0] == "cov" and term[0] == "cov":
            acc = ("cov", acc[1] + term[1] if op == "+" else acc[1] * term[1])
            continue
        a = sample_stationary(acc[1], rng) if acc[0] == "cov" else acc[1]
        b = sample_stationary(term[1], rng) if term[0] == "cov" else term[1]
        acc = ("x", a + b if op == "+" else a * b)
    x = sample_stationary(acc[1], rng) if acc[0] == "cov" else acc[1]
    if not np.any(x != x[0]):  # a pure constant kernel: add a little noise so the series is usable
        x = x + 0.1 * rng.standard_normal(length)
    return x


# ---------------------------------------------------------------- sensor-like

def daily_profile(steps_per_day: int, rng: np.random.Generator, n_harmonics: int = 6) -> np.ndarray:
    """A smooth random daily shape of shape (steps_per_day,), unit standard deviation."""
    phase = np.arange(steps_per_day) / steps_per_day
    shape = np.zeros(steps_per_day)
    for k in range(1, n_harmonics + 1):
        amp = rng.standard_normal() / k ** rng.uniform(0.5, 2.0)
        shape += amp * np.cos(2 * np.pi * k * phase + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.3:  # peaky profile (traffic, footfall): exponentiate
        shape = np.exp(shape / (np.std(shape) + 1e-9))
    return (shape - shape.mean()) / (shape.std() + 1e-9)


def ar1(length: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) noise with unit marginal variance, shape (length,).

    AR(1) is the Gaussian process with autocovariance phi**|lag|, so it is sampled exactly
    by :func:`sample_stationary` (no Python loop over time)."""
    return sample_stationary(float(phi) ** np.arange(length, dtype=np.float64), rng)


def sensor_like(length: int, rng: np.random.Generator, step_minutes: int | None = None,
                info: dict | None = None) -> np.ndarray:
    """One sensor-like series of shape (length,) (see the module docstring). ``info`` (if given)
    receives the sampling step drawn: ``info["step_minutes"]``."""
    step_minutes = int(rng.choice(STEP_MINUTES)) if step_minutes is None else int(step_minutes)
    if info is not None:
        info["step_minutes"] = step_minutes
    per_day = max(1, MINUTES_PER_DAY // step_minutes)
    t = np.arange(length)
    day = t // per_day
    x = np.zeros(length)
    # Daily cycle, optionally slowly varying in amplitude, with a weekday/weekend effect.
    if rng.random() < 0.85:
        profile = daily_profile(per_day, rng)
        amp = rng.uniform(0.5, 2.0) * (1 + 0.3 * np.sin(2 * np.pi * t / (per_day * rng.uniform(20, 200))))
        weekly = np.ones(length)
        if rng.random() < 0.4:
            weekend = (day + int(rng.integers(7))) % 7 >= 5
            weekly = np.where(weekend, rng.uniform(0.1, 0.9), 1.0)
        x += amp * weekly * profile[t % per_day]
    # Trend: linear, or a random walk (the level wanders).
    r = rng.random()
    if r < 0.35:
        x += rng.normal(0, 2.0) * t / length
    elif r < 0.6:
        x += np.cumsum(rng.standard_normal(length)) * rng.uniform(0.005, 0.05)
    # Level shifts at random times.
    for _ in range(int(rng.poisson(1.0))):
        x[int(rng.integers(length)):] += rng.normal(0, 1.5)
    # Slow sensor drift starting somewhere.
    if rng.random() < 0.2:
        s0 = int(rng.integers(length))
        x[s0:] += rng.normal(0, 1.0) * (1 - np.exp(-(t[s0:] - s0) / rng.uniform(per_day, 10 * per_day)))
    # Noise: AR(1), sometimes multiplicative in the level.
    noise = ar1(length, float(rng.uniform(0.0, 0.95)), rng) * rng.uniform(0.05, 0.6)
    if rng.random() < 0.3:
        x = x * (1 + 0.2 * noise)
        x += 0.3 * noise
    else:
        x += noise
    # Spikes.
    if rng.random() < 0.3:
        idx = rng.choice(length, size=max(1, int(length * rng.uniform(0.0005, 0.005))), replace=False)
        x[idx] += rng.normal(0, 5.0, size=idx.shape[0])
    # Output nonlinearity: intermittent counts, or a saturating (clipped) sensor.
    r = rng.random()
    if r < 0.12:
        rate = np.exp(np.clip(x - np.quantile(x, rng.uniform(0.3, 0.8)), -20, 5)) * rng.uniform(0.2, 3.0)
        x = rng.poisson(rate).astype(np.float64)
    elif r < 0.22:
        lo, hi = np.quantile(x, [rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)])
        x = np.clip(x, lo, hi)
    return x


# ---------------------------------------------------------------- calendar (weekly) series

def _day_noise(n_days: int, rng: np.random.Generator, sd: float) -> np.ndarray:
    """Per-day multiplicative factors: AR(1) over days around 1, shape (n_days,)."""
    return np.exp(sd * ar1(max(n_days, 2), float(rng.uniform(0.0, 0.9)), rng)[:n_days])


def calendar_like(length: int, rng: np.random.Generator, step_minutes: int | None = None,
                  closed_hours: bool = False, info: dict | None = None) -> np.ndarray:
    """One calendar series of shape (length,): a weekly main cycle (see the module docstring).

    With ``closed_hours`` the values outside the opening hours (and, half of the time, on
    weekends) are NaN: the series is only ever observed while the place is open."""
    step_minutes = int(rng.choice(CALENDAR_STEP_MINUTES)) if step_minutes is None else int(step_minutes)
    if info is not None:
        info["step_minutes"] = step_minutes
    per_day = max(1, MINUTES_PER_DAY // step_minutes)
    t = np.arange(length)
    offset = int(rng.integers(per_day * 7))            # series start: any time of any weekday
    tt = t + offset
    day = tt // per_day
    n_days = int(day[-1]) + 1
    dow = day % 7
    hour = (tt % per_day) * 24.0 / per_day
    weekend = dow >= 5
    # Opening hours: activity rises after opening and ends at closing (parking, calls, shops).
    openh = float(rng.uniform(5.0, 10.0))
    closeh = float(rng.uniform(max(openh + 6.0, 15.0), 23.5))
    business = rng.random() < 0.6 or closed_hours
    weekday_shape = daily_profile(per_day, rng)
    weekend_shape = daily_profile(per_day, rng) if rng.random() < 0.6 else np.roll(
        weekday_shape, int(rng.integers(-per_day // 8, per_day // 8 + 1)))
    if business:  # a bump confined to opening hours, optionally with a lunch dip / second peak
        h = np.arange(per_day) * 24.0 / per_day
        inside = (h >= openh) & (h < closeh)
        u = np.clip((h - openh) / (closeh - openh), 0, 1)
        bump = np.sin(np.pi * u) ** rng.uniform(0.5, 2.0)
        if rng.random() < 0.4:
            bump = bump * (1 - rng.uniform(0.1, 0.5) * np.exp(-0.5 * ((u - rng.uniform(0.3, 0.7)) / 0.08) ** 2))
        weekday_shape = np.where(inside, bump * (1 + 0.15 * weekday_shape), 0.0)
        weekend_shape = np.where(inside, bump * (1 + 0.15 * weekend_shape), 0.0)
    dow_level = np.exp(rng.normal(0, 0.15, 7))
    dow_level[5:] = rng.uniform(0.0, 0.9, 2) if rng.random() < 0.8 else rng.uniform(1.0, 1.8, 2)
    holiday = rng.random(n_days) < rng.uniform(0.0, 0.03)
    level_day = dow_level[dow] * _day_noise(n_days, rng, float(rng.uniform(0.02, 0.25)))[day]
    use_weekend = (weekend | holiday[day]) & (rng.random() < 0.8)
    shape = np.where(use_weekend, weekend_shape[tt % per_day], weekday_shape[tt % per_day])
    if not business:
        shape = shape - shape.min() if rng.random() < 0.5 else shape
    x = level_day * shape
    # Slow trend / seasonality over weeks.
    if rng.random() < 0.5:
        x = x * (1 + rng.uniform(0.0, 0.4) * np.sin(2 * np.pi * tt / (per_day * rng.uniform(30, 365))
                                                    + rng.uniform(0, 2 * np.pi)))
    if rng.random() < 0.3:
        x = x + rng.normal(0, 0.3) * t / length * np.std(x)
    sd = np.std(x) + 1e-9
    r = rng.random()
    if r < 0.45:  # counts (calls, footfall, cars entering): Poisson around the profile
        rate = np.clip(x, 0, None) / (np.max(np.abs(x)) + 1e-9) * 10 ** rng.uniform(0.0, 2.5)
        x = rng.poisson(rate).astype(np.float64)
    elif r < 0.7:  # occupancy-like: smooth, bounded, AR noise
        x = x + ar1(length, float(rng.uniform(0.5, 0.98)), rng) * rng.uniform(0.02, 0.15) * sd
        x = np.clip(x, 0, None) if rng.random() < 0.5 else x
    else:
        x = x + ar1(length, float(rng.uniform(0.0, 0.9)), rng) * rng.uniform(0.05, 0.4) * sd
    if closed_hours:
        observed = (hour >= openh) & (hour < closeh)
        if rng.random() < 0.5:
            observed &= ~weekend
        x = np.where(observed, x, np.nan)
    return x


# ---------------------------------------------------------------- weather-like series

def weather_like(length: int, rng: np.random.Generator, step_minutes: int | None = None,
                 info: dict | None = None) -> np.ndarray:
    """One weather-like series of shape (length,) (see the module docstring)."""
    step_minutes = int(rng.choice((5, 10, 10, 30, 60, 60, 60))) if step_minutes is None else int(step_minutes)
    if info is not None:
        info["step_minutes"] = step_minutes
    per_day = max(2, MINUTES_PER_DAY // step_minutes)
    t = np.arange(length)
    tt = t + int(rng.integers(per_day))
    day = tt // per_day
    n_days = int(day[-1]) + 2
    # Daily cycle: a smooth asymmetric shape, amplitude varying day to day (clear vs cloudy).
    phase = (tt % per_day) / per_day
    shape = np.cos(2 * np.pi * (phase - rng.uniform(0.5, 0.7)))
    shape = shape + rng.uniform(0, 0.4) * np.cos(4 * np.pi * (phase - rng.uniform(0, 1)))
    amp_days = np.exp(rng.uniform(0.1, 0.6) * ar1(n_days, float(rng.uniform(0.2, 0.8)), rng))
    frac = (tt % per_day) / per_day
    amp = amp_days[day] * (1 - frac) + amp_days[day + 1] * frac          # smooth across midnight
    x = amp * shape
    # Synoptic swings: a smooth process with a 1-6 day time scale, often larger than the cycle.
    ell = per_day * rng.uniform(0.7, 4.0)
    n_coarse = length // max(1, per_day // 8) + 4
    coarse = sample_stationary(np.exp(-0.5 * (np.arange(n_coarse) * max(1, per_day // 8) / ell) ** 2), rng)
    synoptic = np.interp(t, np.arange(n_coarse) * max(1, per_day // 8), coarse)
    x = x + rng.uniform(0.5, 3.0) * synoptic
    # Seasonal drift and small noise.
    x = x + rng.normal(0, 1.0) * np.sin(2 * np.pi * tt / (per_day * 365) + rng.uniform(0, 2 * np.pi))
    x = x + ar1(length, float(rng.uniform(0.3, 0.95)), rng) * rng.uniform(0.02, 0.2)
    if rng.random() < 0.3:  # humidity-like: bounded, anti-correlated shape
        x = -x
        x = np.clip(x, None, np.quantile(x, rng.uniform(0.8, 1.0)))
    return x


def periodic_like(length: int, rng: np.random.Generator, step_minutes: int | None = None,
                  info: dict | None = None) -> np.ndarray:
    """One near-periodic series of shape (length,) (see the module docstring)."""
    step_minutes = int(rng.choice((5, 10, 15, 30, 60, 60))) if step_minutes is None else int(step_minutes)
    if info is not None:
        info["step_minutes"] = step_minutes
    per_day = max(2, MINUTES_PER_DAY // step_minutes)
    t = np.arange(length) + int(rng.integers(per_day))
    x = daily_profile(per_day, rng)[t % per_day]
    if rng.random() < 0.25:                                   # a weekly schedule on top
        x = x * np.where((t // per_day) % 7 >= 5, rng.uniform(0.3, 0.9), 1.0)
    slow = per_day * rng.uniform(30, 400)                     # slow amplitude modulation and drift
    x = x * (1 + rng.uniform(0, 0.3) * np.sin(2 * np.pi * t / slow + rng.uniform(0, 2 * np.pi)))
    x = x + rng.uniform(0, 0.5) * np.sin(2 * np.pi * t / (per_day * rng.uniform(60, 400)) + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.25:                                   # irradiance-like: nothing at night
        x = np.maximum(x, np.quantile(x, rng.uniform(0.3, 0.5)))
    width = np.ptp(x)
    x = x + width * 10 ** rng.uniform(-3, -1.5) * ar1(length, float(rng.uniform(0.0, 0.9)), rng)
    if rng.random() < 0.3:                                    # rounded as the files store it
        q = width * 10 ** rng.uniform(-2.7, -1.7)
        x = np.round(x / q) * q
    return x


def _bursts(length: int, per_day: int, t: np.ndarray, rng: np.random.Generator,
            on_share: float, mean_run: float) -> np.ndarray:
    """On/off Markov chain of shape (length,) bool: about ``on_share`` of the steps on, in runs of
    mean ``mean_run`` steps, switching on more often at some times of day."""
    p_off = 1.0 / max(mean_run, 1.0)
    p_on = p_off * on_share / max(1.0 - on_share, 1e-3)
    hour = np.exp(rng.uniform(0, 2.0) * np.cos(2 * np.pi * ((t % per_day) / per_day - rng.uniform(0, 1))))
    p_on_t = np.clip(p_on * hour / hour.mean(), 0.0, 1.0)
    u = rng.random(length)
    on = np.zeros(length, dtype=bool)
    state = False
    for i in range(length):                   # a two-state chain: a loop, but over one series only
        state = (u[i] >= p_off) if state else (u[i] < p_on_t[i])
        on[i] = state
    return on


def intermittent_like(length: int, rng: np.random.Generator, step_minutes: int | None = None,
                      info: dict | None = None) -> np.ndarray:
    """One intermittent series of shape (length,) (see the module docstring): non-negative, resting
    on its floor (0) for most steps."""
    step_minutes = int(rng.choice((1, 5, 10, 15, 30, 60, 60))) if step_minutes is None else int(step_minutes)
    if info is not None:
        info["step_minutes"] = step_minutes
    per_day = max(2, MINUTES_PER_DAY // step_minutes)
    t = np.arange(length) + int(rng.integers(per_day))
    kind = rng.choice(["rain", "appliance", "spiky"], p=[0.35, 0.4, 0.25])
    if kind == "rain":
        on = _bursts(length, per_day, t, rng, on_share=rng.uniform(0.02, 0.25), mean_run=rng.uniform(1, 12))
        event = np.cumsum(np.diff(on.astype(int), prepend=0) == 1)          # event index per step
        intensity = rng.lognormal(0, 1.0, size=int(event[-1]) + 1)
        x = np.where(on, intensity[event] * rng.gamma(rng.uniform(0.5, 2.0), 1.0, size=length), 0.0)
        if rng.random() < 0.6:                                              # a tipping gauge's grid
            q = np.quantile(x[on], 0.3) if on.any() else 1.0
            x = np.round(x / max(q, 1e-9)) * max(q, 1e-9)
    elif kind == "appliance":
        on = _bursts(length, per_day, t, rng, on_share=rng.uniform(0.02, 0.3), mean_run=rng.uniform(2, 40))
        rating = rng.uniform(5, 40)
        shapes = rating * (1 + 0.15 * rng.standard_normal((int(rng.integers(1, 4)), 64)))  # reused cycle shapes
        start = np.diff(on.astype(int), prepend=0) == 1
        cycle = np.cumsum(start)
        pos = np.arange(length) - np.maximum.accumulate(np.where(start, np.arange(length), 0))
        which = rng.integers(0, shapes.shape[0], size=int(cycle[-1]) + 1)[cycle]
        x = np.where(on, shapes[which, np.minimum(pos, 63)], 0.0)
        base = rng.choice([0.0, 0.0, rng.uniform(0.5, 2.0)])                # a standby draw, or none
        x = np.maximum(x + base * (rng.random(length) < rng.uniform(0.3, 1.0)), 0.0)
        x = np.round(x)                                                     # whole watt-hours
    else:
        on = _bursts(length, per_day, t, rng, on_share=rng.uniform(0.01, 0.1), mean_run=rng.uniform(1, 6))
        base = np.exp(0.5 * ar1(length, 0.99, rng)) * rng.uniform(0.0, 0.5)
        x = base + np.where(on, rng.lognormal(rng.uniform(0, 2), 0.8, size=length), 0.0)
        x = np.round(x / 0.05) * 0.05 if rng.random() < 0.5 else x
    return x


# ---------------------------------------------------------------- missing values and scaling

def add_missing(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Set about ``fraction`` of ``x`` to NaN, mostly in runs (outages), some isolated points."""
    x = x.copy()
    n = x.shape[0]
    target = int(round(fraction * n))
    isolated = int(target * rng.uniform(0.0, 0.3))
    mask = np.zeros(n, dtype=bool)
    if isolated:
        mask[rng.choice(n, size=isolated, replace=False)] = True
    mean_run = max(2.0, rng.uniform(5, 200))
    guard = 0
    while mask.sum() < target and guard < 10_000:
        run = int(rng.geometric(1.0 / mean_run))
        s = int(rng.integers(n))
        mask[s:s + run] = True
        guard += 1
    over = int(mask.sum()) - target  # trim overshoot from the last run so the share stays in range
    if over > 0:
        on = np.flatnonzero(mask)
        mask[on[-over:]] = False
    x[mask] = np.nan
    return x


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def generate_one(index: int, length: int, seed: int = 0, config: SynthConfig = DEFAULT,
                 info: dict | None = None) -> np.ndarray:
    """Series ``index`` of the stream with this ``seed``: float64 array of shape (length,).
    ``info`` (if given) receives ``step_minutes``, the sampling step of the calendar, weather and
    sensor families (None for KernelSynth shapes, which have no calendar)."""
    if info is not None:
        info["step_minutes"] = None
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    rng = _rng(seed, index)
    # the opt-in families' shares, stacked: [0, calendar) [.., + weather) [.., + periodic)
    up_to_weather = config.calendar_fraction + config.weather_fraction
    up_to_periodic = up_to_weather + config.periodic_fraction
    up_to_intermittent = up_to_periodic + config.intermittent_fraction
    family = rng.random() if up_to_intermittent > 0 else 1.0
    if family < config.calendar_fraction:
        x = calendar_like(length, rng, closed_hours=bool(rng.random() < config.closed_hours_probability), info=info)
    elif family < up_to_weather:
        x = weather_like(length, rng, info=info)
    elif family < up_to_periodic:
        x = periodic_like(length, rng, info=info)
    elif family < up_to_intermittent:
        x = intermittent_like(length, rng, info=info)
    elif rng.random() < config.kernel_fraction:
        x = kernel_synth(length, rng, config.max_kernels)
    else:
        x = sensor_like(length, rng, info=info)
    gaps = bool(np.isnan(x).any())               # only calendar series with closed hours
    nonneg = bool(np.nanmin(x) >= 0)             # counts and positive quantities, before centring
    std = np.nanstd(x) if gaps else np.std(x)
    x = (x - (np.nanmean(x) if gaps else np.mean(x))) / (std if std > 0 else 1.0)
    scale = 10 ** rng.uniform(-2, 3)
    level = rng.choice([0.0, rng.normal(0, 3), abs(rng.normal(0, 3)) + 3]) * scale
    if nonneg or rng.random() < 0.2:  # counts and positive quantities keep 0 as the floor
        x = x - (np.nanmin(x) if gaps else x.min())
        level = 0.0
    x = x * scale + level
    if rng.random() < config.missing_probability:
        x = add_missing(x, rng.uniform(*config.missing_fraction), rng)
    return x


def generate(n_series: int, length: int, seed: int = 0, config: SynthConfig = DEFAULT) -> np.ndarray:
    """``n_series`` synthetic series, float64 array of shape (n_series, length), NaN = missing."""
    out = np.empty((int(n_series), int(length)))
    for i in range(int(n_series)):
        out[i] = generate_one(i, length, seed, config)
    return out


def stream(length: int, seed: int = 0, config: SynthConfig = DEFAULT, start: int = 0, step: int = 1
           ) -> Iterator[np.ndarray]:
    """Endless series of shape (length,): indices ``start, start+step, ...`` (split across
    ``step`` data-loader workers with ``start = worker_id``)."""
    for i in itertools.count(start, step):
        yield generate_one(i, length, seed, config)
