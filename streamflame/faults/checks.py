"""The checks of a chaos run against the uninterrupted in-process reference (states byte-identical,
every patch and forecast present, duplicates identical, the last forecasts bit for bit), and the
counts of its log lines.

A mixin of :class:`~streamflame.faults.chaos.ChaosRun` (its state lives there)."""
from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np

from streamflame.core.constants import PATCH_LEN
from streamflame.faults.processes import read_topic
from streamflame.faults.stream import FREQ_MS, T0_MS, Dataset
from streamflame.messages import decode_dead_letter, decode_forecast, decode_patch, forecast_seed

class ChaosChecks:
    """The checks of :class:`ChaosRun` (see the module docstring)."""

    # -- checks -------------------------------------------------------------------
    def _verify(self, ds: Dataset) -> None:
        import redis

        from streamflame import Forecaster  # lazy: torch
        from streamflame.adapters.state.store import NaiveScale, StateMeta  # lazy: redis-py
        from streamflame.pipeline.worker.accuracy import update_naive  # lazy: redis-py
        from streamflame.pipeline.worker.batch import BatchProcessor  # lazy: redis-py

        P = self.report["problems"]
        cfg = self.cfg
        bs = self.broker.bootstrap
        t0 = time.monotonic()

        # observations: what the broker holds of what was produced (acknowledged)
        held = Counter((bytes(rec.key), bytes(rec.value)) for rec in read_topic(bs, cfg.topics.observations))
        sent = Counter(ds.order)
        lost = sent - held
        self.report["observation_records_produced"] = len(ds.order)
        self.report["observation_records_on_topic"] = sum(held.values())
        self.report["observation_records_lost_by_broker"] = sum(lost.values())
        if lost:
            P.append(f"{sum(lost.values())} acknowledged observation records are not on the topic")
        if sum((held - sent).values()):
            self.report["observation_records_duplicated_by_broker"] = sum((held - sent).values())

        # patches: every (sid, seq) with the produced values, duplicates identical
        patches: dict[tuple[str, int], bytes] = {}
        where: dict[tuple[int, int], tuple[str, int]] = {}
        n_patch_records = 0
        for rec in read_topic(bs, cfg.topics.patches):
            n_patch_records += 1
            p = decode_patch(rec.value)
            key = (p.series_id, p.seq)
            where[(rec.partition, rec.offset)] = key
            if key in patches:
                if patches[key] != rec.value:
                    P.append(f"patch {key} re-emitted with different content")
                continue
            patches[key] = rec.value
        want_keys = {(s, k) for s, n in ds.n_patches.items() for k in range(n)}
        missing = want_keys - set(patches)
        extra = set(patches) - want_keys
        if missing:
            P.append(f"{len(missing)} patches missing, e.g. {sorted(missing)[:3]}")
        if extra:
            P.append(f"{len(extra)} unexpected patches, e.g. {sorted(extra)[:3]}")
        covered = 0
        for (sid, k), raw in patches.items():
            if (sid, k) not in want_keys:
                continue
            p = decode_patch(raw)
            got = p.values_array()
            exp = ds.values[sid][k * PATCH_LEN:(k + 1) * PATCH_LEN]
            covered += p.n_observed
            if p.start_ms != T0_MS + k * PATCH_LEN * FREQ_MS or not np.array_equal(got, exp, equal_nan=True):
                P.append(f"patch {(sid, k)} does not hold the produced observations")
        expected_covered = sum(int(np.isfinite(v).sum()) for v in ds.values.values())
        if covered != expected_covered:
            P.append(f"patches cover {covered} non-null observations, the input has {expected_covered} in complete patches")

        # forecasts: every (sid, seq) at least once, duplicates identical except produced_at
        fcs: dict[tuple[str, int], dict] = {}
        n_fc_records = 0
        for rec in read_topic(bs, cfg.topics.forecasts):
            n_fc_records += 1
            m = decode_forecast(rec.value).model_dump()
            m.pop("produced_at", None)
            m.pop("produced_at_ms", None)
            key = (m["series_id"], m["seq"])
            if key in fcs:
                if fcs[key] != m:
                    P.append(f"forecast {key} re-published with different content")
                continue
            fcs[key] = m

        dlq = Counter(decode_dead_letter(rec.value).reason for rec in read_topic(bs, cfg.topics.dlq))
        self.report["dead_letters"] = dict(dlq)
        g0 = cfg.resolve_group(next(iter(ds.n_patches)))
        want_fc = {(s, k) for s, k in want_keys if k + 1 >= g0.min_history_patches}
        if want_fc - set(fcs):
            P.append(f"{len(want_fc - set(fcs))} forecasts missing, e.g. {sorted(want_fc - set(fcs))[:3]}")

        # reference: in-process Forecaster, one update per patch (batched per round)
        f = Forecaster.load(cfg.worker.model_path)
        sids = list(ds.n_patches)
        states = {s: f.init_state(scale=cfg.resolve_group(s).scale, step_seconds=FREQ_MS / 1000) for s in sids}
        naive = {s: NaiveScale() for s in sids}          # the worker's online-MASE scale, same updates
        for k in range(max(ds.n_patches.values())):
            live = [s for s in sids if ds.n_patches[s] > k]
            x = np.stack([ds.values[s][k * PATCH_LEN:(k + 1) * PATCH_LEN] for s in live])
            new = f.update_many([states[s] for s in live], x)
            states.update(zip(live, new))
            for s, row in zip(live, x):
                naive[s] = update_naive(naive[s], np.asarray(row, dtype=np.float64))
        r = redis.Redis.from_url(self.redis.url)
        identical = 0
        try:
            pipe = r.pipeline(transaction=False)
            for s in sids:
                pipe.hgetall(f"sf:{{{s}}}:state")
            stored = dict(zip(sids, pipe.execute()))
        finally:
            r.close()
        bad_states = []
        for s in sids:
            n = ds.n_patches[s]
            rec = stored[s]
            g = cfg.resolve_group(s)
            if n == 0:
                if rec:
                    bad_states.append((s, "state stored for a series without a complete patch"))
                continue
            if set(rec) != {b"seq", b"state", b"meta"}:
                bad_states.append((s, f"fields {sorted(rec)}"))
                continue
            meta = json.loads(rec[b"meta"])
            ptr = where.get((meta["src_partition"], meta["src_offset"]))
            if ptr != (s, n - 1):
                bad_states.append((s, f"meta.src_offset points at {ptr}, not at its last patch"))
                continue
            fc = f.forecast(states[s], g.horizon, g.quantiles, g.num_samples,
                            seed=forecast_seed(cfg.worker.seed, s, n - 1))
            origin = T0_MS + (n * PATCH_LEN - 1) * FREQ_MS
            keys = list(g.quantile_keys)
            last_fc = BatchProcessor._last_forecast(g, n - 1, origin + FREQ_MS, fc)
            ref_meta = StateMeta(model_id=f.model_id, group=g.name, freq_ms=FREQ_MS, last_slot_ms=origin,
                                 src_partition=meta["src_partition"], src_offset=meta["src_offset"],
                                 forecast=last_fc, naive=naive[s])
            ref = {b"seq": str(n - 1).encode(), b"state": states[s].to_bytes(), b"meta": ref_meta.to_json()}
            diff = [k.decode() for k in ref if rec[k] != ref[k]]
            if diff:
                bad_states.append((s, f"differs from the reference in {diff}"))
                continue
            last = fcs.get((s, n - 1))
            if last is not None:
                if not (np.array_equal(np.asarray(last["mean"], np.float32), fc.mean.astype(np.float32))
                        and all(np.array_equal(np.asarray(last["quantiles"][kk], np.float32),
                                               fc.quantiles[j].astype(np.float32)) for j, kk in enumerate(keys))):
                    bad_states.append((s, "last forecast differs from the reference forecast"))
                    continue
            identical += 1
        if bad_states:
            P.append(f"{len(bad_states)} series differ from the uninterrupted reference, e.g. {bad_states[:3]}")
        n_complete = sum(1 for n in ds.n_patches.values() if n > 0)
        self.report.update({
            "observations": ds.observations,
            "observations_non_null": ds.non_null,
            "observations_in_complete_patches": expected_covered,
            "observations_covered_by_patches": covered,
            "series": len(sids),
            "series_identical_to_reference": identical,
            "series_with_patches": n_complete,
            "patches_expected": len(want_keys),
            "patches_distinct": len(patches),
            "patch_records": n_patch_records,
            "patch_duplicates": n_patch_records - len(patches),
            "forecasts_expected": len(want_fc),
            "forecasts_distinct": len(fcs),
            "forecast_records": n_fc_records,
            "forecast_duplicates": n_fc_records - len(fcs),
            "unexpected_exits": {c.name: c.unexpected_exits for c in self.children + self._retired
                                 if c.unexpected_exits},
            "verify_s": round(time.monotonic() - t0, 1),
        })
        if self.report["unexpected_exits"]:
            P.append(f"processes exited without being killed: {self.report['unexpected_exits']}")

    def _log_counts(self) -> dict[str, int]:
        """Totals from the JSON log lines of every ingest/worker process."""
        c: Counter = Counter()
        logs = self.run_dir / "logs"
        for path in sorted(logs.glob("*-*.log")) if logs.exists() else []:
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                e = ev.get("event", "")
                if e == "worker.batch":
                    for k in ("applied", "skipped", "refused", "forecasts"):
                        c[f"worker_{k}"] += int(ev.get(k) or 0)
                    c["worker_batches"] += 1
                    c[f"applied_by_{path.stem}"] += int(ev.get("applied") or 0)
                elif e == "worker.assigned":
                    c["worker_assignments"] += 1
                elif e == "worker.write_refused":
                    c["worker_cas_conflict"] += int(ev.get("conflict") or 0)
                    c["worker_cas_gap"] += int(ev.get("gap") or 0)
                elif e == "worker.rewind":
                    c["worker_rewinds"] += len(ev.get("partitions") or {})
                elif e == "worker.batch_failed":
                    c["worker_batch_failures"] += 1
                elif e == "worker.batch_dropped_on_rebalance":
                    c["worker_batches_dropped_on_rebalance"] += 1
                elif e == "ingest.batch":
                    c["ingest_patches"] += int(ev.get("patches") or 0)
                    c["ingest_skipped_observations"] += int(ev.get("skipped") or 0)
                    c["ingest_cursor_refused"] += int(ev.get("cursor_refused") or 0)
                elif e == "ingest.batch_failed":
                    c["ingest_batch_failures"] += 1
                elif e == "ingest.poll_failed":
                    c["ingest_poll_failures"] += 1
                elif e == "ingest.commit_failed":
                    c["ingest_commit_failures"] += 1
        return dict(sorted(c.items()))
