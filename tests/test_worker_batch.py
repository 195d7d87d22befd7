"""BatchProcessor (the worker's compute step, no I/O) with the real Forecaster."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamflame import Forecaster, SeriesState
from streamflame.adapters.state.store import BrokenRecord, StateRecord
from streamflame.config import ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.messages import PatchMessage, forecast_seed
from streamflame.model import tiny_config
from streamflame.pipeline.worker.batch import BatchProcessor, PatchRecord

FREQ = 60_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (PATCH_LEN * FREQ)


def patch(sid: str, seq: int, values, offset: int | None = None, partition: int = 0) -> PatchRecord:
    vals = [None if (v is None or v != v) else float(v) for v in values]
    start = T0 + seq * PATCH_LEN * FREQ
    p = PatchMessage(series_id=sid, seq=seq, start_ms=start, freq_ms=FREQ, values=vals,
                     n_observed=sum(v is not None for v in vals), last_obs_ms=start + (PATCH_LEN - 1) * FREQ,
                     partition=partition, first_offset=seq * PATCH_LEN, last_offset=seq * PATCH_LEN + 47)
    return PatchRecord(p, partition, seq if offset is None else offset)


def series_values(seed: int, n_patches: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_patches * PATCH_LEN)
    v = 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, t.size)
    v[rng.random(t.size) < 0.05] = np.nan
    return v


@pytest.fixture(scope="module")
def forecaster() -> Forecaster:
    return Forecaster.from_config(tiny_config(), seed=0)


def make_cfg(**worker) -> ServiceConfig:
    return ServiceConfig(worker=worker, defaults={"horizon": 60, "num_samples": 32, "alert_levels": (0.05, 0.95)},
                         groups=[{"name": "late", "match": "late-*", "min_history_patches": 2, "horizon": 12,
                                  "include_samples": True}])


def in_process(f: Forecaster, cfg: ServiceConfig, sid: str, values: np.ndarray):
    """States and forecasts after every patch, by the single-series API."""
    g = cfg.resolve_group(sid)
    s = f.init_state(scale=g.scale, step_seconds=FREQ / 1000)
    out = []
    for k in range(len(values) // PATCH_LEN):
        s = f.update(s, values[k * PATCH_LEN:(k + 1) * PATCH_LEN])
        fc = None
        if s.n_patches >= g.min_history_patches:
            fc = f.forecast(s, g.horizon, g.quantiles, g.num_samples, seed=forecast_seed(cfg.worker.seed, sid, k))
        out.append((s, fc))
    return out


def test_rounds_apply_in_seq_order_and_match_single_series_api(forecaster):
    cfg = make_cfg()
    proc = BatchProcessor(forecaster, cfg)
    data = {"a": series_values(1, 3), "b": series_values(2, 1), "late-c": series_values(3, 2)}
    batch = [patch(sid, k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN], offset=10 * k + i)
             for i, (sid, v) in enumerate(data.items()) for k in range(len(v) // PATCH_LEN)]
    batch.reverse()  # arrival order must not matter within a series' seqs
    res = proc.process(batch, {sid: None for sid in data}, produced_at_ms=0)
    assert res.rounds == 3 and res.applied == 6 and res.skipped == 0 and not res.rejected
    # late-c needs 2 patches of history: one forecast (after seq 1) with samples.
    got = {(fc.series_id, fc.seq): fc for fc in res.forecasts}
    assert sorted(got) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("late-c", 1)]
    for sid, v in data.items():
        ref = in_process(forecaster, cfg, sid, v)
        for k, (state, fc) in enumerate(ref):
            if fc is None:
                assert (sid, k) not in got
                continue
            msg = got[(sid, k)]
            np.testing.assert_array_equal(np.asarray(msg.mean), fc.mean)
            for j, key in enumerate(cfg.resolve_group(sid).quantile_keys):
                np.testing.assert_array_equal(np.asarray(msg.quantiles[key]), fc.quantiles[j])
            assert (msg.samples is not None) == sid.startswith("late-")
            assert msg.origin_ms == T0 + (k * PATCH_LEN + 47) * FREQ and msg.freq_ms == FREQ
            assert msg.horizon == cfg.resolve_group(sid).horizon
        rec = res.records[sid]
        assert rec.seq == len(ref) - 1 and res.expected[sid] == -1
        assert rec.state == ref[-1][0].to_bytes()


def test_skip_applied_duplicates_and_gap_goes_to_dlq(forecaster):
    cfg = make_cfg()
    proc = BatchProcessor(forecaster, cfg)
    v = series_values(4, 5)
    p = [patch("s", k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN], offset=k) for k in range(5)]
    first = proc.process(p[:2], {"s": None})
    stored = first.records["s"]
    # seq 1 again (duplicate within the batch too), seq 2 new, seq 4 after a hole at 3.
    res = proc.process([p[1], p[2], p[2], p[4]], {"s": stored})
    assert res.skipped == 2 and res.applied == 1
    assert [(fc.series_id, fc.seq) for fc in res.forecasts] == [("s", 2)]
    assert [(r.reason, r.record.patch.seq) for r in res.rejected] == [("patch_gap", 4)]
    assert res.records["s"].seq == 2 and res.expected["s"] == 1
    # Only already-applied patches: nothing to do at all.
    again = proc.process([p[0], p[1]], {"s": stored})
    assert again.skipped == 2 and not again.records and not again.forecasts


def test_gap_rewinds_once_to_the_patch_after_the_stored_one(forecaster):
    proc = BatchProcessor(forecaster, make_cfg())
    v = series_values(5, 4)
    p = [patch("s", k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN], offset=100 + 7 * k, partition=2) for k in range(4)]
    stored = proc.process(p[:1], {"s": None}).records["s"]  # Redis kept only seq 0 (offset 100)
    res = proc.process([p[3]], {"s": stored})
    assert res.rewind == {2: 101} and not res.rejected and not res.records
    # The same gap again (the missing patches really are gone): DLQ, no second rewind.
    res = proc.process([p[3]], {"s": stored})
    assert res.rewind == {} and [r.reason for r in res.rejected] == ["patch_gap"]


def test_a_dropped_result_gives_its_gap_the_one_rewind_again(forecaster):
    """The worker drops a result unpublished when the batch it was computed on had a
    write refused (its publisher process): `forget` undoes the gap's rewind memory."""
    proc = BatchProcessor(forecaster, make_cfg())
    v = series_values(5, 4)
    p = [patch("s", k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN], offset=100 + 7 * k, partition=2) for k in range(4)]
    stored = proc.process(p[:1], {"s": None}).records["s"]
    dropped = proc.process([p[3]], {"s": stored})
    assert dropped.rewind == {2: 101} and dropped.rewound == [("s", 0)]
    proc.forget(dropped)
    res = proc.process([p[3]], {"s": stored})
    assert res.rewind == {2: 101} and not res.rejected


def test_alert_fires_for_outlier_and_not_inside_previous_interval(forecaster):
    cfg = make_cfg()
    proc = BatchProcessor(forecaster, cfg)
    v = series_values(6, 2)
    res = proc.process([patch("s", 0, v[:PATCH_LEN]), patch("s", 1, v[PATCH_LEN:])], {"s": None})
    interval = res.records["s"].meta.alert
    assert interval.seq == 1 and interval.start_ms == T0 + 2 * PATCH_LEN * FREQ and len(interval.lo) == PATCH_LEN
    # Next patch: every value inside the stored interval except one far above, one far below.
    lo, hi = interval.lo.astype(np.float64), interval.hi.astype(np.float64)
    nxt = (lo + hi) / 2
    nxt[5] = hi[5] + 4 * (hi[5] - lo[5])
    nxt[30] = lo[30] - (hi[30] - lo[30])
    nxt[7] = np.nan  # missing: never an alert
    res2 = proc.process([patch("s", 2, nxt)], {"s": res.records["s"]})
    alerts = {a.step: a for a in res2.alerts}
    assert sorted(alerts) == [6, 31]
    a = alerts[6]
    assert a.direction == "above" and a.forecast_seq == 1 and a.levels == (0.05, 0.95)
    assert a.timestamp_ms == T0 + (2 * PATCH_LEN + 5) * FREQ and a.score == pytest.approx(4.0, rel=1e-5)
    assert alerts[31].direction == "below" and alerts[31].score == pytest.approx(1.0, rel=1e-5)
    # The in-batch path (previous forecast made in the same batch) gives the same alerts
    # for seq 2 (seq 1 may alert too: this untrained model's intervals are arbitrary).
    res3 = proc.process([patch("s", k, x) for k, x in enumerate([v[:PATCH_LEN], v[PATCH_LEN:], nxt])], {"s": None})
    assert [a.model_dump() for a in res3.alerts if a.forecast_seq == 1] == [a.model_dump() for a in res2.alerts]


def test_no_alert_when_previous_forecast_is_not_adjacent(forecaster):
    proc = BatchProcessor(forecaster, make_cfg())
    v = series_values(7, 1)
    rec = proc.process([patch("s", 0, v)], {"s": None}).records["s"]
    far = patch("s", 1, np.full(PATCH_LEN, 1e9))
    # Same seq chain but the grid jumped: the stored interval is for other timestamps.
    moved = PatchRecord(far.patch.model_copy(update={"start_ms": far.patch.start_ms + FREQ}), 0, 1)
    assert proc.process([moved], {"s": rec}).alerts == []
    assert len(proc.process([far], {"s": rec}).alerts) == PATCH_LEN


@pytest.mark.parametrize("policy", ["reinit", "quarantine"])
def test_corrupt_and_foreign_states_follow_policy(forecaster, policy):
    cfg = make_cfg(on_corrupt_state=policy)
    proc = BatchProcessor(forecaster, cfg)
    v = series_values(8, 3)
    good = proc.process([patch("x", 0, v[:PATCH_LEN])], {"x": None}).records["x"]
    other = Forecaster.from_config(tiny_config(), seed=1)
    foreign_bytes = other.update(other.init_state(), v[:PATCH_LEN]).to_bytes()
    loaded = {
        "corrupt": StateRecord(0, b"SFST\x01garbage", good.meta),
        "foreign": StateRecord(0, foreign_bytes, good.meta),
        "old-model": StateRecord(0, good.state, dataclasses.replace(good.meta, model_id="sf-old")),
        "unreadable": BrokenRecord("seq field is b'zz', not an integer"),
    }
    batch = [patch(sid, 1, v[PATCH_LEN:2 * PATCH_LEN]) for sid in loaded]
    res = proc.process(batch, loaded)
    if policy == "quarantine":
        assert set(res.quarantine) == set(loaded) and not res.records and not res.forecasts
        assert {r.reason for r in res.rejected} == {"series_quarantined"}
        return
    assert res.reinitialised == 4 and {r.reason for r in res.rejected} == {"corrupt_state"}
    fresh = forecaster.update(forecaster.init_state(step_seconds=FREQ / 1000), v[PATCH_LEN:2 * PATCH_LEN])
    for sid in loaded:
        rec = res.records[sid]
        assert rec.seq == 1 and rec.state == fresh.to_bytes()
        assert SeriesState.from_bytes(rec.state).n_patches == 1
    assert res.expected == {"corrupt": 0, "foreign": 0, "old-model": 0, "unreadable": -1}
    assert res.replace_broken == {"unreadable"}


def test_quarantined_series_patches_go_to_dlq(forecaster):
    proc = BatchProcessor(forecaster, make_cfg())
    v = series_values(9, 3)
    tomb = BrokenRecord("corrupt_state: bad magic", seq=1, quarantined=True)
    res = proc.process([patch("q", k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN]) for k in range(3)], {"q": tomb})
    assert res.skipped == 2 and [r.reason for r in res.rejected] == ["series_quarantined"]
    assert not res.records and not res.forecasts


def test_horizon_beyond_model_is_a_config_error(forecaster):
    from streamflame.config import ConfigError

    with pytest.raises(ConfigError, match="max_horizon"):
        BatchProcessor(forecaster, ServiceConfig(defaults={"horizon": 500}))


def test_a_checkpoint_with_another_patch_len_is_a_config_error():
    """The model's patch_len is the truth; the worker refuses a checkpoint whose patches differ from ingest's."""
    from streamflame.config import ConfigError

    other = Forecaster.from_config(tiny_config(patch_len=PATCH_LEN // 2), seed=0)
    with pytest.raises(ConfigError, match=f"patch_len is {PATCH_LEN // 2} but ingest cuts patches of {PATCH_LEN}"):
        BatchProcessor(other, make_cfg())


def test_online_accuracy_scores_the_previous_forecast_like_eval_metrics(forecaster):
    """Patch k is scored against the forecast published after patch k-1 (its first
    48 steps), with the eval metric functions, in the batch path and the stored path."""
    from streamflame.eval.metrics import coverage, quantile_loss, seasonal_error, wql

    cfg = make_cfg()
    g = cfg.defaults
    proc = BatchProcessor(forecaster, cfg)
    v = series_values(8, 3)
    res = proc.process([patch("s", k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN]) for k in range(3)], {"s": None})
    fcs = {fc.seq: fc for fc in res.forecasts}
    assert [sc.forecast_seq for sc in res.scores["s"]] == [0, 1]  # seq 0 has no earlier forecast
    for sc in res.scores["s"]:
        k = sc.forecast_seq + 1
        y = v[k * PATCH_LEN:(k + 1) * PATCH_LEN]
        fc = fcs[k - 1]
        q = np.array([fc.quantiles[key][:PATCH_LEN] for key in g.quantile_keys])
        mean = np.asarray(fc.mean[:PATCH_LEN])
        n = int((~np.isnan(y)).sum())
        assert sc.points == n and sc.group == "default"
        # WQL of the single patch = the eval WQL of the published forecast (float32-rounded in the meta).
        assert sc.ql / sc.abs_y == pytest.approx(wql(y, q, g.quantiles), rel=1e-5)
        assert sc.ql == pytest.approx(quantile_loss(y, q, g.quantiles) / len(g.quantiles), rel=1e-5)
        # MASE: scale = naive (lag 1) MAE of everything before patch k.
        scale = seasonal_error(v[:k * PATCH_LEN], 1)
        keep = ~np.isnan(y)
        assert sc.scaled_err / sc.scaled_points == pytest.approx(np.mean(np.abs(y[keep] - mean[keep])) / scale, rel=1e-5)
        lo, hi = q[g.quantiles.index(0.1)], q[g.quantiles.index(0.9)]
        assert sc.inside["0.8"] == round(coverage(y, lo, hi) * n)
        assert set(sc.inside) == {"0.2", "0.4", "0.6", "0.8", "0.9"}  # symmetric pairs + the 0.05/0.95 alert pair
    # The stored path (forecast and naive scale read back from the record) scores identically.
    first = proc.process([patch("s", k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN]) for k in range(2)], {"s": None})
    rec = first.records["s"]
    from streamflame.adapters.state.store import StateMeta

    rec = dataclasses.replace(rec, meta=StateMeta.from_json(rec.meta.to_json()))
    again = proc.process([patch("s", 2, v[2 * PATCH_LEN:])], {"s": rec})
    assert again.scores["s"] == res.scores["s"][1:]
    assert again.records["s"].meta.to_json() == res.records["s"].meta.to_json()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the premise: sums overflow
def test_naive_scale_stays_json_representable_for_huge_values():
    """Regression (fuzz run after online accuracy merged): differences of +-1e308 values
    overflowed the naive scale to inf, orjson wrote null and the record became unreadable."""
    import math

    from streamflame.adapters.state.store import NaiveScale, StateMeta
    from streamflame.pipeline.worker.accuracy import update_naive

    n = update_naive(NaiveScale(), np.array([1.0, 2.0, 4.0]))
    assert (n.abs_sum, n.count, n.last) == (3.0, 2, 4.0)
    n = update_naive(n, np.array([1e308, -1e308, 5.0]))
    assert math.isfinite(n.abs_sum) and n.last == 5.0
    meta = StateMeta("m", "g", 60_000, 0, 0, 0, None, n)
    assert StateMeta.from_json(meta.to_json()).naive == n


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the premise: sums overflow
def test_online_mase_overflow_leaves_the_patch_unscaled():
    """Regression (CI warning from the fuzz test): an error of ~1e308 over a tiny naive
    scale overflowed the scaled error to inf, which would pin the MASE gauge at inf."""
    import math

    from streamflame.adapters.state.store import LastForecast, NaiveScale
    from streamflame.pipeline.worker.accuracy import score_many

    levels = (0.1, 0.5, 0.9)
    fc = LastForecast(3, 0, levels, np.zeros((3, 4), np.float32), np.zeros(4, np.float32), (0.1, 0.9))
    tiny = NaiveScale(last=0.0, abs_sum=1e-300, count=1)
    huge, big, normal = score_many([
        ("a", "g", fc, np.array([1e308, 0.0, 0.0, 0.0]), tiny),     # loss sums overflow: not scored
        ("b", "g", fc, np.array([1e300, 0.0, 0.0, 0.0]), tiny),     # sums finite, ratio overflows
        ("c", "g", fc, np.array([2.0, 0.0, 0.0, 0.0]), NaiveScale(0.0, 4.0, 2))])
    assert huge is None
    assert (big.scaled_err, big.scaled_points) == (0.0, 0) and big.points == 4
    assert math.isfinite(big.ql) and math.isfinite(big.abs_y)
    assert (normal.scaled_err, normal.scaled_points) == (1.0, 4)   # |2| / (4 / 2)


@pytest.mark.parametrize("seed", range(5))
def test_alerts_are_exactly_the_values_outside_the_interval(seed):
    """The vectorised pre-selection of BatchProcessor._alerts against the definition, value by
    value with schemas.alert_score: bounds themselves (float32 quantiles read as doubles) are
    inside, missing values never alert, n < 48 steps are judged only up to n."""
    from types import SimpleNamespace

    from streamflame.core.timefmt import iso_ms
    from streamflame.messages import alert_score
    from streamflame.adapters.state.store import LastForecast
    from streamflame.pipeline.worker.batch import BatchResult

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, PATCH_LEN + 1))
    lo = rng.normal(0, 1, n).astype(np.float32)
    hi = (lo + np.abs(rng.normal(0, 1, n))).astype(np.float32)
    collapsed = rng.random(n) < 0.1
    hi[collapsed] = lo[collapsed]
    mid = np.stack([lo, (lo + hi) / 2, hi]).astype(np.float32)
    fc = LastForecast(seq=3, start_ms=T0, quantile_levels=(0.01, 0.5, 0.99), quantiles=mid,
                      alert_levels=(0.01, 0.99))
    x = rng.normal(0.5, 1.5, PATCH_LEN)
    on_bound = rng.random(PATCH_LEN) < 0.2
    x[:n][on_bound[:n]] = np.where(rng.random(on_bound[:n].sum()) < 0.5, lo[on_bound[:n]], hi[on_bound[:n]])
    x[rng.random(PATCH_LEN) < 0.15] = np.nan
    rec = patch("a-1", 4, x)
    res = BatchResult()
    BatchProcessor._alerts(SimpleNamespace(sid="a-1"), fc, rec.patch, rec.patch.values_array(), res)
    want = []
    for i, v in enumerate(rec.patch.values[:n]):
        hit = None if v is None else alert_score(v, float(lo[i]), float(hi[i]))
        if hit is not None:
            want.append((i + 1, hit[0], hit[1], v, iso_ms(rec.patch.start_ms + i * FREQ)))
    got = [(a.step, a.direction, a.score, a.value, a.timestamp) for a in res.alerts]
    assert got == want
    assert any(on_bound[:n]) or n < 5


def test_kept_forecast_of_a_series_near_float32_max_stays_finite():
    """A forecast of values near float32's maximum may pass it; the interval kept in
    the state meta (float32) is held at the maximum instead of becoming +-inf."""
    from types import SimpleNamespace

    from streamflame.messages import MAX_ABS_VALUE

    top = MAX_ABS_VALUE * 1.5
    fc = SimpleNamespace(horizon=60, quantile_levels=(0.1, 0.9), mean=np.full(60, top),
                         quantiles=np.stack([np.full(60, -top), np.full(60, top)]))
    kept = BatchProcessor._last_forecast(make_cfg().resolve_group("s"), 3, 0, fc)
    assert kept.quantiles.shape == (2, 48) and kept.mean.shape == (48,)
    assert np.isfinite(kept.quantiles).all() and np.isfinite(kept.mean).all()
    assert kept.quantiles[1, 0] == np.float32(MAX_ABS_VALUE) and kept.quantiles[0, 0] == -np.float32(MAX_ABS_VALUE)


def _plain(res) -> tuple:
    """A result's published numbers and written bytes, comparable across runs."""
    from streamflame.messages.codec import encode
    fcs = sorted((fc.series_id, fc.seq, encode(fc)) for fc in res.forecasts)
    return fcs, {sid: (r.seq, r.state, r.meta_json) for sid, r in res.records.items()}


@pytest.mark.parametrize("trial", range(3))
def test_any_batch_split_and_state_source_gives_the_same_bytes(forecaster, trial):
    """The worker's StateBatch path: one batch with every patch, or random splits into smaller
    batches whose states come back as bytes (a Redis load) or as the record the worker computed
    (its cache, without the bytes): the same forecasts and state bytes, equal to the single-series API."""
    rng = np.random.default_rng(trial)
    cfg = make_cfg()
    data = {f"s{i}" if i % 4 else f"late-{i}": series_values(50 + 10 * trial + i, int(rng.integers(1, 5)))
            for i in range(int(rng.integers(3, 20)))}
    every = [patch(sid, k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN]) for sid, v in data.items()
             for k in range(len(v) // PATCH_LEN)]
    whole = BatchProcessor(forecaster, cfg).process(every, {sid: None for sid in data}, produced_at_ms=0)
    proc = BatchProcessor(forecaster, cfg)
    stored: dict = {}
    got_fcs, last = [], {}
    order = sorted(every, key=lambda r: r.patch.seq)            # a series' seqs in order across batches
    cuts = sorted(rng.choice(np.arange(1, len(order)), int(rng.integers(0, min(5, len(order)))), replace=False))
    for part in np.split(np.array(order, dtype=object), cuts):
        loaded = {}
        for r in part:
            sid = r.patch.series_id
            rec = stored.get(sid)
            if rec is not None and rng.random() < 0.5:
                rec = dataclasses.replace(rec, decoded=None)      # as loaded from Redis
            elif rec is not None:
                rec = dataclasses.replace(rec, state=b"")         # as kept by the state cache
            loaded[sid] = rec
        res = proc.process(list(part), loaded, produced_at_ms=0)
        assert not res.rejected
        stored.update(res.records)
        got_fcs += _plain(res)[0]
        last.update(_plain(res)[1])
    assert sorted(got_fcs) == _plain(whole)[0] and last == _plain(whole)[1]
    for sid, v in data.items():
        assert whole.records[sid].state == in_process(forecaster, cfg, sid, v)[-1][0].to_bytes()


def test_bad_state_bytes_reinitialise_only_their_own_series(forecaster):
    """Truncated bytes, a checksum mismatch and a float64 state of the same model in one batch
    with good series: those three start afresh (dead letter), the others continue unchanged."""
    import torch
    cfg = make_cfg()
    proc = BatchProcessor(forecaster, cfg)
    sids = ["g0", "bad-trunc", "g1", "bad-crc", "g2", "bad-f64"]
    data = {sid: series_values(70 + i, 3) for i, sid in enumerate(sids)}
    first = proc.process([patch(sid, k, v[k * PATCH_LEN:(k + 1) * PATCH_LEN]) for sid, v in data.items()
                          for k in range(2)], {sid: None for sid in sids})
    loaded = {sid: dataclasses.replace(r, decoded=None) for sid, r in first.records.items()}
    b = bytes(loaded["bad-crc"].state)          # the worker's own records: a memoryview of its batch's buffer
    loaded["bad-crc"] = dataclasses.replace(loaded["bad-crc"], state=b[:100] + bytes([b[100] ^ 1]) + b[101:])
    loaded["bad-trunc"] = dataclasses.replace(loaded["bad-trunc"], state=loaded["bad-trunc"].state[:-20])
    f64 = Forecaster.from_config(tiny_config(), seed=0).to(dtype=torch.float64)
    assert f64.model_id == forecaster.model_id
    loaded["bad-f64"] = dataclasses.replace(loaded["bad-f64"], state=f64.update(f64.init_state(), data["bad-f64"][:96])
                                            .to_bytes())
    res = proc.process([patch(sid, 2, v[2 * PATCH_LEN:]) for sid, v in data.items()], loaded)
    assert res.reinitialised == 3
    assert sorted(r.record.patch.series_id for r in res.rejected) == ["bad-crc", "bad-f64", "bad-trunc"]
    assert {r.reason for r in res.rejected} == {"corrupt_state"}
    for sid, v in data.items():
        if sid.startswith("g"):
            assert res.records[sid].state == in_process(forecaster, cfg, sid, v)[-1][0].to_bytes()
        else:
            fresh = forecaster.update(forecaster.init_state(step_seconds=FREQ / 1000), v[2 * PATCH_LEN:])
            assert res.records[sid].state == fresh.to_bytes()
