"""What `streamflame chaos` runs: its options, the seeded synthetic stream (:func:`make_dataset`)
and the seeded fault plan (:func:`plan_faults`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamflame.core.constants import PATCH_LEN
from streamflame.core.timefmt import iso_ms

T0_MS = 1_704_067_200_000
FREQ_MS = 60_000


@dataclass
class ChaosOptions:
    scenario: str
    observations: int = 20_000
    series: int = 60
    kills: int = 4
    seed: int = 0
    partitions: int = 4
    produce_s: float = 20.0
    timeout_s: float = 300.0
    run_dir: Path | None = None
    keep: bool = False
    model: str = "tiny"
    quiet: bool = False
    idempotent_producer: bool = False
    """kafka.idempotent_producer of every producer of the run (false, as `streamflame up`
    sets it for the embedded Tansu broker; true shows the loss on broker restarts)."""
    redis_lose_s: float = 1.0
    """redis scenario: after the SIGKILL, cut the AOF back to its size this many seconds
    earlier (what ``appendfsync everysec`` may lose on a power loss; a SIGKILL of the
    process alone loses nothing, the written AOF is in the page cache). 0 = plain SIGKILL."""


@dataclass
class Dataset:
    order: list[tuple[bytes, bytes]]          # (key, value) in produce order
    values: dict[str, np.ndarray]            # sid -> slot values of the complete patches (NaN = none)
    n_patches: dict[str, int]
    observations: int                        # observations in the stream (nulls included)
    non_null: int


def make_dataset(n_obs: int, n_series: int, seed: int) -> Dataset:
    """Seeded input: per series a sine + noise on a 1-minute grid with ~5 %
    missing slots and ~3 % explicit nulls, sent as batch messages of 1-16
    observations (every third series as single messages with ISO timestamps),
    series interleaved at random (each series' own order kept)."""

    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, n_series)
    counts = np.floor(w / w.sum() * n_obs).astype(int)
    counts[: n_obs - counts.sum()] += 1
    per_series: dict[str, list[bytes]] = {}
    values: dict[str, np.ndarray] = {}
    n_patches: dict[str, int] = {}
    non_null = 0
    for i in range(n_series):
        sid = f"chaos-{i:05d}"
        c = int(counts[i])
        span = int(np.ceil(c / 0.95)) + 1
        slots = np.sort(rng.choice(np.arange(1, span), size=c - 1, replace=False)) if c > 1 else np.array([], int)
        slots = np.concatenate([[0], slots]).astype(int)
        v = 20 + 5 * np.sin(slots / (5 + i % 7)) + rng.normal(0, 0.3, c)
        nulls = rng.random(c) < 0.03
        nulls[0] = False
        vals = [None if nulls[k] else float(v[k]) for k in range(c)]
        non_null += int((~nulls).sum())
        n = (int(slots[-1]) + 1) // PATCH_LEN
        n_patches[sid] = n
        grid = np.full(n * PATCH_LEN, np.nan)
        for s, x in zip(slots, vals):
            if s < n * PATCH_LEN and x is not None:
                grid[s] = x
        values[sid] = grid
        msgs = []
        a = 0
        while a < c:
            if i % 3 == 2:
                msgs.append({"series_id": sid, "timestamp": iso_ms(T0_MS + int(slots[a]) * FREQ_MS), "value": vals[a]})
                a += 1
                continue
            b = min(c, a + int(rng.integers(1, 17)))
            msgs.append({"series_id": sid, "timestamps": [T0_MS + int(s) * FREQ_MS for s in slots[a:b]],
                         "values": vals[a:b]})
            a = b
        per_series[sid] = [json.dumps(m).encode() for m in msgs]
    draw = [sid for sid, msgs in per_series.items() for _ in msgs]
    rng.shuffle(draw)
    pos = dict.fromkeys(per_series, 0)
    order = []
    for sid in draw:
        order.append((sid.encode(), per_series[sid][pos[sid]]))
        pos[sid] += 1
    return Dataset(order, values, n_patches, int(counts.sum()), non_null)


@dataclass
class Fault:
    t: float            # seconds after the stream started
    action: str         # kill-worker, kill-ingest, kill-redis, kill-broker, scale-up, scale-down-term, scale-down-kill
    restart_after: float = 0.0
    done_at: float | None = None
    detail: dict = field(default_factory=dict)


def plan_faults(o: ChaosOptions) -> list[Fault]:
    rng = np.random.default_rng(o.seed + 1_000_003)
    k = o.kills
    if o.scenario == "rebalance":
        # cycles of (scale up, scale down) spread over the stream
        span = o.produce_s / max(1, k)
        out = []
        for i in range(k):
            up = i * span + rng.uniform(0.1, 0.3) * span
            down = i * span + rng.uniform(0.6, 0.9) * span
            out += [Fault(float(up), "scale-up"),
                    Fault(float(down), "scale-down-term" if i % 2 == 0 else "scale-down-kill")]
        return out
    # stratified over [1 s, 1.15 * produce_s] (most while the stream flows, some while it
    # drains): one moment drawn uniformly in each of k equal slots
    lo, hi = 1.0, max(2.0, 1.15 * o.produce_s)
    edges = np.linspace(lo, hi, k + 1)
    times = [float(rng.uniform(a, b)) for a, b in zip(edges[:-1], edges[1:])]
    if o.scenario == "crash":
        # alternating targets, the first one drawn: each process lives ~2 slots between kills
        first = int(rng.integers(0, 2))
        targets = [("worker", "ingest")[(first + i) % 2] for i in range(k)]
        return [Fault(float(t), f"kill-{tg}", float(rng.uniform(0.0, 1.0))) for t, tg in zip(times, targets)]
    if o.scenario == "redis":
        # odd faults take the ingest and worker processes down with redis (one host lost)
        return [Fault(float(t), "kill-redis" if i % 2 == 0 else "kill-redis+apps", float(rng.uniform(0.5, 2.0)))
                for i, t in enumerate(times)]
    return [Fault(float(t), "kill-broker", float(rng.uniform(0.5, 2.0))) for t in times]
