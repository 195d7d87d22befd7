"""One batch of patches -> new states, forecasts and alerts. Pure computation:
no Kafka, no Redis (the caller loads the records and performs the writes).

Per series the decision is taken against the stored record (``seq`` = last
applied patch, -1 = none):

* ``seq <= stored``: already applied -> skipped (its forecast was published
  before the state was written);
* ``seq == stored + 1``: applied; several consecutive patches of one series in
  one batch are applied in seq order, one *round* per position (round r takes
  the r-th pending patch of every series, one ``Forecaster.step_batch`` per round,
  then one ``forecast_batch`` per forecast setting);
* ``seq > stored + 1``: a gap. Ingest never skips a seq, so the missing patches
  are on the topic before this one and Redis lost the state that covered them
  (e.g. an AOF ``everysec`` window). When the stored meta says where the last
  applied patch sits on this partition, the worker rewinds the partition to
  just after it; when no record exists at all (the series' first writes were
  lost), to the beginning of the partition (once per (series, stored seq));
  otherwise the patches go to the DLQ as ``patch_gap`` and are not applied;
* a record that cannot be used (corrupt/foreign state bytes, unreadable record)
  follows ``worker.on_corrupt_state``: ``reinit`` starts the series from a fresh
  state at the next patch (DLQ notice ``corrupt_state``), ``quarantine`` moves
  the record aside and sends the series' patches to the DLQ
  (``series_quarantined``).

The states live in one :class:`streamflame.model.batch.StateBatch` per batch: decoded
from the stored bytes straight into its buffers, stepped and forecast there and encoded
back (no ``SeriesState`` per series); the same bytes and numbers as the single-series
calls. A record this worker computed carries its bytes as ``decoded``
(:class:`~streamflame.model.batch.EncodedState`), which the state cache keeps.

Forecasts are made after every applied patch of a series with at least
``min_history_patches`` patches; the sampling seed is
``forecast_seed(worker.seed, series_id, seq)``, so a replay publishes the same
numbers bit for bit. The state meta carries the first 48 steps of the forecast
made after the previous patch (all quantiles and the mean, float32). Each new
patch is judged against it before it is applied: alerts compare each observed
value with the interval at the group's ``alert_levels``, and the online accuracy
(:mod:`streamflame.pipeline.worker.accuracy`) scores it into ``BatchResult.scores``,
which the worker adds to its metrics only once the state write was applied.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streamflame import SeriesState, StateDecodeError
from streamflame.model.batch import EncodedState, StateBatch
from streamflame.adapters.state.store import BrokenRecord, LastForecast, NaiveScale, StateMeta, StateRecord
from streamflame.config import ConfigError, GroupSettings, ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.core.frequency import format_frequency
from streamflame.core.timefmt import iso_ms
from streamflame.messages import MAX_ABS_VALUE, AlertMessage, ForecastMessage, PatchMessage, alert_score, forecast_seed
from streamflame.pipeline.worker.accuracy import PatchScore, score_many, update_naive

__all__ = ["PatchRecord", "Rejected", "BatchResult", "BatchProcessor", "check_patch_len"]


@dataclass(frozen=True)
class PatchRecord:
    """A decoded patch and where it came from on the patches topic."""

    patch: PatchMessage
    partition: int
    offset: int
    key: bytes | None = None
    raw: bytes | None = None
    timestamp_ms: int = -1  # Kafka record timestamp (ingest's send time), -1 unknown


@dataclass(frozen=True)
class Rejected:
    """A patch for the DLQ (``reason`` from ``messages.REJECT_REASONS``)."""

    record: PatchRecord
    reason: str
    detail: str


@dataclass
class BatchResult:
    forecasts: list[ForecastMessage] = field(default_factory=list)
    alerts: list[AlertMessage] = field(default_factory=list)
    scores: dict[str, list[PatchScore]] = field(default_factory=dict)  # series -> online accuracy, seq order
    rejected: list[Rejected] = field(default_factory=list)
    # CAS writes: new record per series, the seq it was computed from, series
    # whose unreadable record may be replaced, series to quarantine (reason).
    records: dict[str, StateRecord] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    replace_broken: set[str] = field(default_factory=set)
    quarantine: dict[str, str] = field(default_factory=dict)
    # Where each written series' first applied patch of this batch sits (partition, offset).
    first_applied: dict[str, tuple[int, int]] = field(default_factory=dict)
    rewind: dict[int, int] = field(default_factory=dict)  # partition -> offset to re-read from
    rewound: list[tuple[str, int]] = field(default_factory=list)  # gaps this batch rewinds for (see forget)
    applied: int = 0
    skipped: int = 0
    rounds: int = 0
    reinitialised: int = 0
    step_s: float = 0.0      # step_batch total
    forecast_s: float = 0.0  # forecast_batch total


@dataclass
class _Series:
    sid: str
    group: GroupSettings
    row: int  # the series' row in the batch's StateBatch
    expected: int
    meta: StateMeta | None
    pending: list[PatchRecord]
    forecast: LastForecast | None
    naive: NaiveScale = NaiveScale()
    replace_broken: bool = False


def check_patch_len(model_patch_len: int) -> None:
    """Raise ConfigError unless the checkpoint cuts patches as the pipeline does: the model's
    ``config.patch_len`` is the truth, :data:`streamflame.core.constants.PATCH_LEN` the pipeline's copy."""
    if model_patch_len != PATCH_LEN:
        raise ConfigError([f"worker.model_path: the checkpoint's patch_len is {model_patch_len} but ingest cuts "
                           f"patches of {PATCH_LEN} observations; use a checkpoint with patch_len={PATCH_LEN}"])


class BatchProcessor:
    """Applies batches of patches with one :class:`streamflame.Forecaster`.

    Keeps, per process, which (series, stored seq) gaps it already rewound for,
    so a patch that is really missing from the topic ends in the DLQ instead of
    a rewind loop.
    """

    def __init__(self, forecaster, cfg: ServiceConfig):
        self.f = forecaster
        self.cfg = cfg
        self._rewound: set[tuple[str, int]] = set()
        self._freq_names: dict[int, str] = {}
        self._sb: StateBatch | None = None   # reused from batch to batch (its buffers are kept)
        self._stored: dict = {}              # series -> row or StateDecodeError (_decode_stored)
        cfg.check_horizons(forecaster.config.max_horizon)
        check_patch_len(forecaster.config.patch_len)

    def forget(self, res: BatchResult) -> None:
        """Undo what ``process`` remembered for a result that is dropped unpublished
        (its batch is re-read): its gaps get their one rewind again."""
        self._rewound.difference_update(res.rewound)

    # -- decisions -------------------------------------------------------------

    def process(self, batch: list[PatchRecord], loaded: dict, produced_at_ms: int | None = None) -> BatchResult:
        """``loaded``: ``StateStore.load_many`` result for every series in ``batch``."""
        res = BatchResult()
        produced_at_ms = int(time.time() * 1000) if produced_at_ms is None else produced_at_ms
        by_series: dict[str, list[PatchRecord]] = {}
        for r in batch:
            by_series.setdefault(r.patch.series_id, []).append(r)
        sb = self._sb
        if (sb is None or sb.capacity < len(by_series) or sb.layout.model_id != self.f.model_id
                or sb.layout.dtype != self.f.dtype or sb.device != self.f.device):
            self._sb = self.f.state_batch(len(by_series))
        self._sb.clear()
        self._stored = self._decode_stored(by_series, loaded)
        work: list[_Series] = []
        for sid, items in by_series.items():
            items.sort(key=lambda r: (r.patch.seq, r.offset))
            w = self._plan(sid, items, loaded.get(sid), res)
            if w is not None:
                work.append(w)
        self._apply(work, res, produced_at_ms)
        return res

    def _decode_stored(self, by_series: dict[str, list[PatchRecord]], loaded: dict) -> dict:
        """The stored states of this model that a patch of the batch applies to, decoded together
        into the batch (StateBatch.append_many): series -> its row, or the StateDecodeError of its
        bytes. Records of another model and SeriesState records are left to ``_usable_state``."""
        sids, datas, verify = [], [], []
        for sid, items in by_series.items():
            rec = loaded.get(sid)
            if (not isinstance(rec, StateRecord) or rec.meta.model_id != self.f.model_id
                    or isinstance(rec.decoded, SeriesState) or all(r.patch.seq <= rec.seq for r in items)):
                continue
            own = isinstance(rec.decoded, EncodedState)
            sids.append(sid)
            datas.append(rec.decoded.data if own else rec.state)
            verify.append(not own)
        return dict(zip(sids, self._sb.append_many(datas, verify))) if sids else {}

    def _plan(self, sid: str, items: list[PatchRecord], rec, res: BatchResult) -> _Series | None:
        """One series' decision against its stored record ``rec`` (items in seq order): skips,
        rejections and gaps go into ``res``; the series' work (state and the consecutive run of
        patches to apply) is returned, None when nothing of it is applied."""
        problem: str | None = None
        stored: int | None = -1
        meta = None
        if isinstance(rec, BrokenRecord):
            if rec.quarantined:
                self._quarantined(sid, items, rec, res)
                return None
            problem, stored = rec.reason, rec.seq
        elif isinstance(rec, StateRecord):
            stored, meta = rec.seq, rec.meta

        pending = self._dedupe([r for r in items if stored is None or r.patch.seq > stored])
        res.skipped += len(items) - len(pending)
        if not pending:
            return None
        row = None
        if isinstance(rec, StateRecord):
            row, problem = self._usable_state(sid, rec)
        group = self.cfg.resolve_group(sid)
        if problem is not None:
            w = self._start_afresh(sid, group, stored, pending, problem, res)
            if w is None:
                return None
            meta = None
            if stored is None:  # even the stored seq is unreadable: the run starts at the first pending patch
                stored = pending[0].patch.seq - 1
        else:
            if row is None:  # no record: the series starts at seq 0
                row = self._fresh(group, pending[0])
            w = _Series(sid, group, row, stored, meta, [], meta.forecast if meta else None,
                        meta.naive if meta else NaiveScale())
        return self._take_run(w, stored, meta, pending, res)

    @staticmethod
    def _quarantined(sid: str, items: list[PatchRecord], rec: BrokenRecord, res: BatchResult) -> None:
        """A quarantined series: its patches after the stored seq go to the DLQ, the others are skipped."""
        for r in items:
            if rec.seq is None or r.patch.seq > rec.seq:
                res.rejected.append(Rejected(r, "series_quarantined", f"series {sid!r} is quarantined: {rec.reason}"))
            else:
                res.skipped += 1

    def _usable_state(self, sid: str, rec: StateRecord) -> tuple[int | None, str | None]:
        """(the state's row in the batch, None), or (None, why it cannot be used): another
        model's record or state bytes, unreadable bytes or dtype, a partial patch in the buffer
        (nothing of it enters the batch)."""
        got = self._stored.pop(sid, None)        # decoded with the batch's others (_decode_stored)
        if got is not None:
            return (None, str(got)) if isinstance(got, StateDecodeError) else (got, None)
        try:
            if rec.meta.model_id != self.f.model_id:
                raise StateDecodeError(f"state was written by model {rec.meta.model_id}, "
                                       f"this worker runs {self.f.model_id}")
            d = rec.decoded
            if isinstance(d, EncodedState):
                return self._sb.append_encoded(d), None
            if isinstance(d, SeriesState):
                return self._sb.append_state(d), None
            return self._sb.append_bytes(rec.state), None
        except StateDecodeError as e:
            return None, str(e)

    def _fresh(self, group: GroupSettings, first: PatchRecord) -> int:
        """A fresh state's row (the series' sampling step makes its calendar periods)."""
        return self._sb.append_state(self.f.init_state(scale=group.scale, step_seconds=first.patch.freq_ms / 1000))

    def _start_afresh(self, sid: str, group: GroupSettings, stored: int | None, pending: list[PatchRecord],
                      problem: str, res: BatchResult) -> _Series | None:
        """A stored record that cannot be used, per ``worker.on_corrupt_state``: ``quarantine``
        (None: the series' patches go to the DLQ) or ``reinit``: a fresh state continues at the
        next seq (or, if even the stored seq is unreadable, at the first pending patch)."""
        if self.cfg.worker.on_corrupt_state == "quarantine":
            res.quarantine[sid] = f"corrupt_state: {problem}"
            for r in pending:
                res.rejected.append(Rejected(r, "series_quarantined", f"state of {sid!r} quarantined: {problem}"))
            return None
        res.reinitialised += 1
        res.rejected.append(Rejected(pending[0], "corrupt_state",
                                     f"state of {sid!r} could not be used ({problem}); "
                                     f"re-initialised from scratch at seq {pending[0].patch.seq}"))
        replace = stored is None
        return _Series(sid, group, self._fresh(group, pending[0]), -1 if replace else stored, None, [], None, replace_broken=replace)

    def _take_run(self, w: _Series, stored: int, meta: StateMeta | None, pending: list[PatchRecord],
                  res: BatchResult) -> _Series | None:
        """Move into ``w.pending`` the consecutive run starting right after the stored seq; what
        follows a missing seq is a gap (:meth:`_gap`). None when nothing is applied."""
        nxt = stored + 1
        for r in pending:
            if r.patch.seq != nxt:
                break
            w.pending.append(r)
            nxt += 1
        leftover = pending[len(w.pending):]
        if leftover:
            self._gap(res, w.sid, stored, meta, leftover, rewind=not w.pending)
        if not w.pending:
            return None
        res.first_applied[w.sid] = (w.pending[0].partition, w.pending[0].offset)
        return w

    @staticmethod
    def _dedupe(items: list[PatchRecord]) -> list[PatchRecord]:
        out: list[PatchRecord] = []
        for r in items:
            if not out or r.patch.seq != out[-1].patch.seq:
                out.append(r)
        return out

    def _gap(self, res: BatchResult, sid: str, stored: int, meta: StateMeta | None,
             leftover: list[PatchRecord], rewind: bool) -> None:
        first = leftover[0]
        target = None
        if (rewind and meta is not None and meta.src_partition == first.partition
                and meta.src_offset + 1 < first.offset):
            target = meta.src_offset + 1
        elif rewind and stored == -1 and meta is None:
            # No record at all, yet ingest (which always starts a series at seq 0)
            # sent seq > 0: Redis lost the series' first writes entirely, so no meta
            # says where seq 0 sits. Re-read the partition from its beginning (once);
            # every other series' patches there are skipped as already applied.
            target = 0
        if target is not None and (sid, stored) not in self._rewound:
            if len(self._rewound) > 100_000:
                self._rewound.clear()
            self._rewound.add((sid, stored))
            res.rewound.append((sid, stored))
            res.rewind[first.partition] = min(res.rewind.get(first.partition, target), target)
            return
        for r in leftover:
            res.rejected.append(Rejected(r, "patch_gap",
                                         f"series {sid!r}: patch seq {r.patch.seq} but the stored state has "
                                         f"seq {stored} applied; seq {stored + 1} is missing"))

    # -- model work ------------------------------------------------------------

    def _apply(self, work: list[_Series], res: BatchResult, produced_at_ms: int) -> None:
        sb = self._sb
        final_round = max((len(w.pending) for w in work), default=0) - 1   # every series has a patch
        encoded: list = []
        r = 0
        while True:
            active = [w for w in work if len(w.pending) > r]
            if not active:
                break
            res.rounds += 1
            recs = [w.pending[r] for w in active]
            patches = np.stack([x.patch.values_array() for x in recs])
            t0 = time.perf_counter()
            self.f.step_batch(sb, patches, [w.row for w in active])
            res.step_s += time.perf_counter() - t0
            if r == final_round:
                # every state is final now: encoded before the forecasts, while the step's tensors
                # are still in cache (the sampling pass evicts them); memoryviews of one buffer
                # (the cache copies what it keeps)
                encoded = sb.encode([w.row for w in work])
            to_score: list[tuple] = []
            for w, x in zip(active, recs):
                self._judge(w, x.patch, res, to_score)
            for sc in score_many(to_score):
                if sc is not None:
                    res.scores.setdefault(sc.series_id, []).append(sc)
            self._forecasts(active, recs, res, produced_at_ms)
            res.applied += len(active)
            r += 1
        for w, data in zip(work, encoded):
            last = w.pending[-1]
            p = last.patch
            meta = StateMeta(model_id=self.f.model_id, group=w.group.name, freq_ms=p.freq_ms,
                             last_slot_ms=p.start_ms + (PATCH_LEN - 1) * p.freq_ms,
                             src_partition=last.partition, src_offset=last.offset, forecast=w.forecast,
                             naive=w.naive)
            res.records[w.sid] = StateRecord(p.seq, data, meta, decoded=EncodedState(data))
            res.expected[w.sid] = w.expected
            if w.replace_broken:
                res.replace_broken.add(w.sid)

    def _judge(self, w: _Series, p: PatchMessage, res: BatchResult, to_score: list) -> None:
        """Judge patch ``p`` against the forecast made after the previous patch
        (alerts now; online accuracy queued in ``to_score`` for one vectorised
        pass per round), then advance the series' naive scale."""
        f = w.forecast
        values = p.values_array()
        if f is not None and f.seq == p.seq - 1 and f.start_ms == p.start_ms:
            to_score.append((w.sid, w.group.name, f, values, w.naive))
            if f.alert_levels is not None and w.group.alert_levels is not None:
                self._alerts(w, f, p, values, res)
        w.naive = update_naive(w.naive, values)

    @staticmethod
    def _alerts(w: _Series, a: LastForecast, p: PatchMessage, values: np.ndarray, res: BatchResult) -> None:
        """``values``: ``p.values_array()`` (the caller has it already)."""
        lo_row, hi_row = a.lo, a.hi
        n = a.n
        x = values[:n]
        with np.errstate(invalid="ignore"):  # NaN (missing) compares False: never an alert
            outside = np.flatnonzero((x < lo_row[:n].astype(np.float64)) | (x > hi_row[:n].astype(np.float64)))
        raw = p.values
        for i in outside.tolist():
            v = raw[i]
            lo, hi = float(lo_row[i]), float(hi_row[i])
            hit = alert_score(v, lo, hi)
            if hit is None:
                continue
            ts = p.start_ms + i * p.freq_ms
            res.alerts.append(AlertMessage.model_construct(
                series_id=w.sid, timestamp=iso_ms(ts), timestamp_ms=ts, value=float(v), lower=lo, upper=hi,
                levels=a.alert_levels, forecast_seq=a.seq, step=i + 1, score=float(hit[1]), direction=hit[0]))

    def _forecasts(self, active: list[_Series], recs: list[PatchRecord], res: BatchResult,
                   produced_at_ms: int) -> None:
        groups: dict[tuple, list[int]] = {}
        n_patches = self._sb.n_patches
        for i, w in enumerate(active):
            if n_patches[w.row] >= w.group.min_history_patches:
                g = w.group
                groups.setdefault((g.horizon, g.quantiles, g.num_samples), []).append(i)
            else:
                w.forecast = None
        seed = self.cfg.worker.seed
        for (horizon, quantiles, num_samples), idx in groups.items():
            seeds = [forecast_seed(seed, active[i].sid, recs[i].patch.seq) for i in idx]
            t0 = time.perf_counter()
            fcs = self.f.forecast_batch(self._sb, [active[i].row for i in idx], horizon, quantiles, num_samples, seeds,
                                        samples=any(active[i].group.include_samples for i in idx))
            res.forecast_s += time.perf_counter() - t0
            for j, i in enumerate(idx):
                w, p, fc = active[i], recs[i].patch, fcs.get(j)
                origin = p.start_ms + (PATCH_LEN - 1) * p.freq_ms
                res.forecasts.append(ForecastMessage.build(
                    series_id=w.sid, seq=p.seq, origin_ms=origin, freq_ms=p.freq_ms, mean=fc.mean,
                    quantile_levels=fc.quantile_levels, quantiles=fc.quantiles, model_id=self.f.model_id,
                    samples=fc.samples if w.group.include_samples else None, produced_at_ms=produced_at_ms,
                    frequency=self._frequency(p.freq_ms), group=w.group.name))
                w.forecast = self._last_forecast(w.group, p.seq, origin + p.freq_ms, fc)

    @staticmethod
    def _last_forecast(g: GroupSettings, seq: int, start_ms: int, fc) -> LastForecast:
        n = min(PATCH_LEN, fc.horizon)

        def f32(a):   # a forecast of a series near float32's maximum may pass it: kept at the maximum
            return np.ascontiguousarray(np.clip(a[..., :n], -MAX_ABS_VALUE, MAX_ABS_VALUE), np.float32)
        return LastForecast(seq=seq, start_ms=start_ms, quantile_levels=tuple(float(q) for q in fc.quantile_levels),
                            quantiles=f32(fc.quantiles), mean=f32(fc.mean),
                            alert_levels=None if g.alert_levels is None else tuple(g.alert_levels))

    def _frequency(self, freq_ms: int) -> str:
        name = self._freq_names.get(freq_ms)
        if name is None:
            name = self._freq_names[freq_ms] = format_frequency(freq_ms)
        return name
