"""Calendar periods and the seasonal memory (model/seasonal.py): causal, streaming == batch, resumable."""
import numpy as np
import pytest
import torch

from streamflame import Forecaster, SeriesState
from streamflame.model import tiny_config
from streamflame.model.flame import Flame, load_compatible
from streamflame.model.perception import calendar_steps, dominant_period
from streamflame.model.seasonal import BINS, CANDIDATES, choice

P = 48


def weekly_series(n_days: int, step_minutes: int, rng, noise: float = 0.05) -> np.ndarray:
    """Weekdays busy in office hours, weekends flat: the week is the cycle."""
    per_day = 24 * 60 // step_minutes
    t = np.arange(n_days * per_day)
    hour = (t % per_day) * step_minutes / 60
    weekday = (t // per_day) % 7 < 5
    x = np.where(weekday & (hour >= 8) & (hour < 18), 10 + 5 * np.sin(np.pi * (hour - 8) / 10), 1.0)
    return x + rng.normal(0, noise, len(x))


def test_calendar_steps():
    assert calendar_steps(3600) == (24.0, 168.0)
    assert calendar_steps(300) == (288.0, 2016.0)
    assert calendar_steps(86400) == (0.0, 7.0)              # daily data: the week only
    assert calendar_steps(None) == (0.0, 0.0) and calendar_steps(7 * 86400) == (0.0, 0.0)


def test_calendar_period_finds_the_day_under_multiday_swings():
    """Hourly temperature-like series: a daily cycle under large slow swings. The detector alone
    may miss it; with the calendar's 24 and 168 steps the day is chosen (not the week)."""
    rng = np.random.default_rng(0)
    found_alone, found_cal = 0, 0
    for _ in range(20):
        t = np.arange(1024)
        swing = np.cumsum(rng.normal(0, 0.6, 1024))
        x = torch.from_numpy(swing + 2 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, 1024))[None]
        found_alone += int(dominant_period(x, 4).item() == 24)
        p = dominant_period(x, 4, torch.tensor([[24.0, 168.0]])).item()
        found_cal += int(abs(p - 24) <= 1)
    assert found_cal == 20 and found_alone < found_cal


def test_calendar_period_prefers_the_week_when_weekends_differ():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(weekly_series(21, 30, rng)[-1024:])[None]           # 30-min: week = 336 steps
    assert abs(dominant_period(x, 4, torch.tensor([[48.0, 336.0]])).item() - 336) <= 1
    assert dominant_period(x, 4, torch.tensor([[0.0, 0.0]])).item() == dominant_period(x, 4).item()


def test_week_profile_carries_a_cycle_longer_than_the_window_and_is_chosen():
    """5-minute steps: a week is 2,016 steps, twice the 1,024-step window. After three weeks the
    week profile predicts the next patch (a Monday morning after a flat weekend) far better than
    the window's seasonal naive, and the tracked choice is the week profile."""
    rng = np.random.default_rng(2)
    x = weekly_series(7 * 3 + 1, 5, rng)
    f = Forecaster.from_config(tiny_config(seasonal_memory=True, window=1024), seed=0)
    state = f.state_from_history(x, step_seconds=300)
    assert state.tensors["cal"].tolist() == [288.0, 2016.0]
    assert state.tensors["clock"] == len(x) // P * P
    herr = torch.from_numpy(state.tensors["herr"])
    assert CANDIDATES[choice(herr).item()] == "week"
    err = herr[:, 1] / herr[:, 0]
    assert err[CANDIDATES.index("week")] < 0.5 * err[CANDIDATES.index("window")]
    # the stored prediction of the next patch by the week profile is last week's same hours
    nxt = state.tensors["next"][CANDIDATES.index("week")]
    n = len(x) // P * P
    np.testing.assert_allclose(nxt, x[n - 2016: n - 2016 + P], atol=0.3)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_seasonal_memory_streams_like_batch(dtype, tol):
    """Patch by patch (the recurrent step) and the whole history at once give the same seasonal
    state and the same forecasts, with the hint choice and its features in use."""
    rng = np.random.default_rng(3)
    cfg = tiny_config(seasonal_memory=True, hint_features=True, ar_patches=True, window=96)
    f = Forecaster.from_config(cfg, seed=3).to(dtype=dtype)
    with torch.no_grad():                                    # trained-looking weights, not zero
        f.model.embed_seas.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    # day = 20 steps, week = 140 (beyond the 96-step window): both profiles fill
    x = weekly_series(40, 72, rng, noise=0.3)[: 30 * P + 17]
    x[300:340] = np.nan
    step = 86400 / 20
    state = f.init_state(step_seconds=step)
    picks = set()
    for k in range(len(x) // P):
        state = f.update(state, x[k * P:(k + 1) * P])
        ref = f.state_from_history(x[:(k + 1) * P], step_seconds=step)
        for name in ("clock", "profile", "herr", "next", "cal"):
            np.testing.assert_allclose(state.tensors[name], ref.tensors[name], rtol=tol, atol=tol, err_msg=name)
        a = f.forecast(state, 60, seed=k, num_samples=8)
        b = f.forecast(ref, 60, seed=k, num_samples=8)
        assert np.max(np.abs(a.samples - b.samples)) <= tol * max(1.0, np.max(np.abs(b.samples)))
        picks.add(int(choice(torch.from_numpy(state.tensors["herr"])).item()))
    assert len(picks) >= 2                                   # the choice changed along the way
    full = f.state_from_history(x, step_seconds=step)
    roundtrip = SeriesState.from_bytes(full.to_bytes())
    assert np.allclose(f.forecast(roundtrip, 60, seed=1).samples, f.forecast(full, 60, seed=1).samples)


def test_a_state_stored_before_the_seasonal_fields_still_updates_and_forecasts():
    f = Forecaster.from_config(tiny_config(), seed=0)
    x = np.sin(np.arange(5 * P) / 5.0)
    new = f.state_from_history(x)
    old = SeriesState(new.model_id, new.dtype,
                      {k: v for k, v in new.tensors.items() if k not in ("cal", "clock", "profile", "herr", "next")},
                      new.buffer, new.n_obs, new.n_patches, new.scale)
    old = SeriesState.from_bytes(old.to_bytes())
    assert "profile" not in old.tensors
    a, b = f.update(old, x[:P]), f.update(new, x[:P])
    assert set(a.tensors) == set(b.tensors)
    np.testing.assert_array_equal(a.tensors["h"], b.tensors["h"])   # the network part is untouched
    assert np.isfinite(f.forecast(a, 30, seed=0).samples).all()


def test_seasonal_levers_load_from_weights_without_them():
    torch.manual_seed(0)
    plain = Flame(tiny_config())
    seas = Flame(tiny_config(hint_features=True))
    load_compatible(seas, plain, "test")
    x = torch.randn(2, 6, 48).cumsum(-1)
    assert torch.equal(plain.loss(x, future=[0, 1]), seas.loss(x, future=[0, 1]))   # zero-initialised


def test_default_state_stays_under_32_kb():
    f = Forecaster.from_config()
    s = f.state_from_history(np.random.default_rng(0).normal(size=5000), step_seconds=60)
    assert s.nbytes <= 32 * 1024
    assert s.tensors["profile"].shape == (sum(BINS), 2)
