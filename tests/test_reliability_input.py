"""Hostile input (issue #5 item 5): properties of decoding + assembly against
the generator's documented expectations, regression tests for what the fuzz
run found, and security of stored states (item 7)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from streamflame import Forecaster
from streamflame.config import ServiceConfig
from streamflame.model import tiny_config
from streamflame.schemas import MAX_EPOCH_MS, MIN_EPOCH_MS, PATCH_LEN, PatchMessage, iso_ms
from streamflame.worker.batch import BatchProcessor, PatchRecord


@pytest.fixture(scope="module")
def forecaster() -> Forecaster:
    return Forecaster.from_config(tiny_config(), seed=0)


# --------------------------------------------------------------------------- far-future regression


@pytest.mark.parametrize("ms, text", [
    (MAX_EPOCH_MS + 1, "+10000-01-01T00:00:00Z"),
    (MAX_EPOCH_MS + 60_000, "+10000-01-01T00:00:59.999Z"),
    (MIN_EPOCH_MS - 86_400_000, "0000-12-31T00:00:00Z"),
    (MIN_EPOCH_MS - 367 * 86_400_000, "-0001-12-31T00:00:00Z"),  # year 0 is a leap year
])
def test_iso_ms_outside_years_1_to_9999_uses_the_expanded_form(ms, text):
    assert iso_ms(ms) == text


def test_iso_ms_expanded_form_agrees_with_datetime_where_both_exist():
    # the fallback path computed for in-range instants gives what datetime gives
    from streamflame.schemas import _civil_from_days
    from datetime import date, timedelta

    for days in range(-719_162, 2_932_897, 9_973):
        d = date(1970, 1, 1) + timedelta(days=days)
        assert _civil_from_days(days) == (d.year, d.month, d.day)


def test_patch_ending_in_year_9999_is_forecast_not_a_worker_crash(forecaster):
    """Regression (found by `streamflame fuzz`): a series whose observations end
    at 9999-12-31 completes a patch; the forecast's `start` (origin + one step)
    is past year 9999 and iso_ms raised OverflowError, which killed the worker
    (and, supervised, crash-looped it on the same patch)."""
    freq = 60_000
    last = MAX_EPOCH_MS - MAX_EPOCH_MS % freq
    start = last - (PATCH_LEN - 1) * freq
    vals = [float(j) for j in range(PATCH_LEN)]
    p = PatchMessage(series_id="far", seq=0, start_ms=start, freq_ms=freq, values=vals, n_observed=PATCH_LEN,
                     last_obs_ms=last, partition=0, first_offset=0, last_offset=47)
    cfg = ServiceConfig(defaults={"horizon": 12, "num_samples": 4})
    res = BatchProcessor(forecaster, cfg).process([PatchRecord(p, 0, 0)], {"far": None}, produced_at_ms=0)
    (fc,) = res.forecasts
    assert fc.origin == "9999-12-31T23:59:00Z" and fc.start == "+10000-01-01T00:00:00Z"
    assert fc.step_ms(12) == last + 12 * freq and len(fc.mean) == 12
    assert res.records["far"].seq == 0
