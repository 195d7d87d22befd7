"""`streamflame bench alerts-limit` (the oracle bound of what a test of one statistic can catch at
the budget): its statistics against a naive loop, and the bound on constructed series where the
answer is known."""
from __future__ import annotations

import numpy as np

from streamflame.bench import inject as I
from streamflame.bench.alerts_limit import _errors4, caught, main, statistics

HOUR = 3_600_000


def test_errors4_equals_a_naive_loop():
    rng = np.random.default_rng(1)
    v = np.cumsum(rng.normal(size=80))
    day = 24
    for seasonal in (False, True):
        got = _errors4(v, HOUR, seasonal)
        for t in range(len(v)):
            for k in range(1, 5):
                o = t - k
                if o < (day if seasonal else 0):
                    assert np.isnan(got[t, k - 1])
                    continue
                want = sum(v[o + i] - (v[o] + (v[o + i - day] - v[o - day] if seasonal else 0.0))
                           for i in range(1, k + 1))
                assert np.isclose(got[t, k - 1], want), (seasonal, t, k)


def _copies(v, injections):
    return v, I.apply(v, injections, np.random.default_rng(0))


def test_a_large_spike_on_white_noise_is_within_reach_and_a_small_shift_on_a_walk_is_not():
    rng = np.random.default_rng(2)
    n = 24 * 7 * 8                                          # 8 weeks of hourly values
    noise = rng.normal(size=n)
    spikes = [I.Injection("spike", a, 1, 10.0, 1.0) for a in range(300, n - 10, 250)]
    clean, inj = _copies(noise, spikes)
    st = statistics(clean, inj, HOUR)
    p = 1.0 / (7 * 24)                                     # budget 1 per week, hourly
    ret = caught(*st["return"], spikes, p, skip=100)
    assert len(ret) == len(spikes) and all(ok for _, _, ok in ret)   # 10σ jump and return: every one
    change = caught(*st["change"], spikes, p, skip=100)
    assert all(ok for _, _, ok in change)

    walk = np.cumsum(rng.normal(size=n))
    shifts = [I.Injection("level_shift", a, 48, 0.5, 1.0) for a in range(300, n - 60, 250)]
    clean, inj = _copies(walk, shifts)
    st = statistics(clean, inj, HOUR)
    for name in ("change", "holt", "last4", "seasonal4"):
        res = caught(*st[name], shifts, p, skip=100)
        assert len(res) == len(shifts)
        assert np.mean([ok for _, _, ok in res]) < 0.3, name   # a 0.5σ step is one ordinary jump of a walk


def test_the_threshold_spends_the_budget_on_the_clean_copy():
    rng = np.random.default_rng(3)
    clean = np.abs(rng.normal(size=10_000))
    p = 0.01
    tau = np.quantile(clean[100:], 1 - p)
    inj_s = clean.copy()
    inj = [I.Injection("spike", 500, 1, 6.0, 1.0), I.Injection("spike", 700, 1, 6.0, 1.0)]
    inj_s[500] = tau + 0.01                                   # just above: caught
    inj_s[700] = tau - 0.01                                   # just below, and the next slot too
    inj_s[701] = tau - 0.01
    assert [ok for _, _, ok in caught(clean, inj_s, inj, p, skip=100)] == [True, False]


def test_the_command_runs_on_training_series(capsys):
    assert main(["--split", "train", "--series", "3", "--no-model"]) == 0
    out = capsys.readouterr().out
    assert "level_shift" in out and "return" in out and "model4" not in out
