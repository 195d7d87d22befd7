"""Worker state in Redis: the one place that reads and writes ``sf:{<sid>}:state``.

Layout (one Redis hash per series; the hash tag ``{<sid>}`` keeps every key of a
series in one Redis Cluster slot)::

    sf:{<sid>}:state        seq    ascii int: last applied patch seq
                            state  SeriesState.to_bytes() (opaque here)
                            meta   JSON, see StateMeta (deterministic: no wall-clock):
                                   the last forecast's first 48 steps (alerts and
                                   online accuracy) and the series' naive scale
    sf:{<sid>}:state        seq, quarantined=<reason>   a quarantine tombstone
    sf:{<sid>}:quarantine   the record as it was when it was quarantined (a
                            string key's value under ``raw``), + quarantine_reason

Reads are one pipelined round trip of ``HMGET`` per batch. Writes are one
pipelined round trip of ``EVALSHA`` of a compare-and-set script per key
(single-key scripts, so the pipeline is cluster-safe): a record with
``seq = k`` computed from a loaded record with ``seq = e`` (``-1`` = absent) is
written only if the stored seq is still ``e``; anything else is refused and
reported, never overwritten. A retried or duplicated batch is therefore
harmless, and two workers can never both advance a series from the same seq.

Everything written is a pure function of the input patches (no timestamps, no
hostnames), so a replayed run leaves byte-identical records.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

import numpy as np
import orjson
from redis.exceptions import NoScriptError, ResponseError

__all__ = [
    "LastForecast",
    "NaiveScale",
    "BrokenRecord",
    "SaveResult",
    "StateMeta",
    "StateRecord",
    "StateStore",
    "CAS_SCRIPT",
]

# Result codes of the compare-and-set script.
APPLIED, STALE, CONFLICT, GAP, BROKEN, QUARANTINED = 1, 0, -1, -2, -3, -4

CAS_SCRIPT = r"""
-- KEYS[1] state hash; ARGV: new_seq, expected_seq (-1 = absent), state, meta, replace_broken ('1'/'0')
-- returns {code, stored_seq}; stored_seq = -1 when absent, -2 when unreadable
local new, expected = tonumber(ARGV[1]), tonumber(ARGV[2])
local function write()
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'state', ARGV[3], 'meta', ARGV[4])
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  if expected == -1 then write() return {1, -1} end
  return {-2, -1}
end
local cur = nil
if kind == 'hash' then
  if redis.call('HEXISTS', KEYS[1], 'quarantined') == 1 then return {-4, -2} end
  local s = redis.call('HGET', KEYS[1], 'seq')
  if s and string.match(s, '^%-?%d+$') then cur = tonumber(s) end
end
if cur == nil then
  if ARGV[5] == '1' then
    redis.call('DEL', KEYS[1]) write() return {1, -2}
  end
  return {-3, -2}
end
if cur == expected then write() return {1, cur} end
if cur >= new then return {0, cur} end
if cur < expected then return {-2, cur} end
return {-1, cur}
"""

QUARANTINE_SCRIPT = r"""
-- KEYS[1] state key, KEYS[2] quarantine key; ARGV[1] reason
-- Moves the record aside and leaves a tombstone; idempotent.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' and redis.call('HEXISTS', KEYS[1], 'quarantined') == 1 then return 0 end
local seq = '-1'
if kind == 'hash' then
  seq = redis.call('HGET', KEYS[1], 'seq') or '-1'
  if not string.match(seq, '^%-?%d+$') then seq = '-1' end
end
redis.call('DEL', KEYS[2])
if kind == 'hash' then
  redis.call('RENAME', KEYS[1], KEYS[2])
elseif kind == 'string' then
  redis.call('HSET', KEYS[2], 'raw', redis.call('GET', KEYS[1]))
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'quarantine_reason', ARGV[1], 'quarantine_type', kind)
redis.call('HSET', KEYS[1], 'seq', seq, 'quarantined', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class LastForecast:
    """What the worker keeps of the last published forecast of a series, to judge
    the next patch against it: the alert interval and the online accuracy
    (docs/architecture.md, "Online accuracy").

    ``quantile_levels`` (Q,) with ``quantiles`` (Q, n) and ``mean`` (n,), float32,
    n <= 48, for steps 1..n; step 1 is at ``start_ms``. ``seq`` is the forecast's
    patch seq. ``alert_levels``: the (lo, hi) levels of the alert interval (both
    in ``quantile_levels``), None = no alerts. ``mean`` is None in records
    written before online accuracy existed (they held the alert interval only);
    such a forecast raises alerts but is not scored.
    """

    seq: int
    start_ms: int
    quantile_levels: tuple[float, ...]
    quantiles: np.ndarray
    mean: np.ndarray | None = None
    alert_levels: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return int(self.quantiles.shape[1])

    def row(self, level: float) -> np.ndarray:
        """The quantile row at ``level`` (matched at 6 decimals)."""
        for i, q in enumerate(self.quantile_levels):
            if abs(q - level) < 5e-7:
                return self.quantiles[i]
        raise KeyError(f"level {level} not in {self.quantile_levels}")

    @property
    def levels(self) -> tuple[float, float] | None:
        """The alert interval's levels (None: no alerts)."""
        return self.alert_levels

    @property
    def lo(self) -> np.ndarray:
        return self.row(self.alert_levels[0])

    @property
    def hi(self) -> np.ndarray:
        return self.row(self.alert_levels[1])

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "start_ms": self.start_ms, "quantile_levels": list(self.quantile_levels),
                "quantiles": np.ascontiguousarray(self.quantiles, np.float32),
                "mean": None if self.mean is None else np.ascontiguousarray(self.mean, np.float32),
                "alert_levels": None if self.alert_levels is None else list(self.alert_levels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LastForecast":
        q = np.asarray(d["quantiles"], np.float32)
        levels = tuple(float(x) for x in d["quantile_levels"])
        if q.ndim != 2 or q.shape[0] != len(levels):
            raise ValueError(f"last forecast: quantiles shape {q.shape} for {len(levels)} levels")
        mean = None if d.get("mean") is None else np.asarray(d["mean"], np.float32)
        if mean is not None and mean.shape != (q.shape[1],):
            raise ValueError(f"last forecast: mean shape {mean.shape}, quantiles {q.shape}")
        al = d.get("alert_levels")
        return cls(int(d["seq"]), int(d["start_ms"]), levels, q, mean,
                   None if al is None else (float(al[0]), float(al[1])))

    @classmethod
    def from_alert_dict(cls, d: Mapping[str, Any]) -> "LastForecast":
        """A record of the older layout: ``alert`` = {seq, start_ms, levels, lo, hi}."""
        lo = np.asarray(d["lo"], np.float32)
        hi = np.asarray(d["hi"], np.float32)
        if lo.shape != hi.shape or lo.ndim != 1:
            raise ValueError(f"alert interval lo/hi shapes differ: {lo.shape} vs {hi.shape}")
        a, b = (float(x) for x in d["levels"])
        return cls(int(d["seq"]), int(d["start_ms"]), (a, b), np.stack([lo, hi]), None, (a, b))


@dataclass(frozen=True)
class NaiveScale:
    """Causal in-sample scale of a series for the online MASE: the running sum and
    count of ``|y_t - y_{t-1}|`` over consecutive observed slots of every applied
    patch (the naive one-step forecast's MAE), and the value of the last slot
    (None = missing) to pair with the next patch's first slot."""

    last: float | None = None
    abs_sum: float = 0.0
    count: int = 0

    @property
    def scale(self) -> float:
        """Mean absolute one-step difference; NaN while no pair was observed."""
        return self.abs_sum / self.count if self.count else float("nan")


@dataclass(frozen=True)
class StateMeta:
    """Small JSON beside the state bytes.

    ``last_slot_ms``: epoch ms of slot 47 of the last applied patch.
    ``src_partition``/``src_offset``: where that patch sits on the patches topic
    (lets a worker rewind after Redis lost recent writes).
    ``forecast``: the last published forecast's first steps (alerts, accuracy).
    ``naive``: the series' causal scale for the online MASE.
    """

    model_id: str
    group: str
    freq_ms: int
    last_slot_ms: int
    src_partition: int
    src_offset: int
    forecast: LastForecast | None = None
    naive: NaiveScale = NaiveScale()

    @property
    def alert(self) -> LastForecast | None:
        """The last forecast when it carries an alert interval."""
        f = self.forecast
        return f if f is not None and f.alert_levels is not None else None

    def to_json(self) -> bytes:
        d = {"model_id": self.model_id, "group": self.group, "freq_ms": self.freq_ms,
             "last_slot_ms": self.last_slot_ms, "src_partition": self.src_partition,
             "src_offset": self.src_offset,
             "forecast": None if self.forecast is None else self.forecast.to_dict(),
             "naive": [self.naive.last, self.naive.abs_sum, self.naive.count]}
        return orjson.dumps(d, option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_json(cls, raw: bytes) -> "StateMeta":
        d = orjson.loads(raw)
        if type(d) is not dict:
            raise ValueError("meta is not a JSON object")
        if d.get("forecast") is not None:
            fc = LastForecast.from_dict(d["forecast"])
        elif d.get("alert") is not None:  # layout before online accuracy
            fc = LastForecast.from_alert_dict(d["alert"])
        else:
            fc = None
        nv = d.get("naive")
        naive = NaiveScale() if nv is None else NaiveScale(None if nv[0] is None else float(nv[0]),
                                                         float(nv[1]), int(nv[2]))
        return cls(str(d["model_id"]), str(d["group"]), int(d["freq_ms"]), int(d["last_slot_ms"]),
                   int(d["src_partition"]), int(d["src_offset"]), fc, naive)


@dataclass(frozen=True)
class StateRecord:
    """One series' stored state: last applied patch ``seq``, model state bytes, meta.

    ``decoded``: the same state when the worker has it at hand (a ``SeriesState``, or the bytes
    it encoded itself as a ``model.batch.EncodedState``, decoded again without the checksum)
    (the records it computes, and its cache of them: :mod:`streamflame.adapters.state.cache`,
    where ``state`` is left empty to halve the memory); never stored, not compared.
    """

    seq: int
    state: bytes | memoryview    # the records a worker computes: a read-only view of its batch's buffer
    meta: StateMeta
    decoded: Any = field(default=None, compare=False, repr=False)

    @cached_property
    def meta_json(self) -> bytes:
        """``meta`` as stored (encoded once, for the write and for :attr:`nbytes`)."""
        return self.meta.to_json()

    @property
    def nbytes(self) -> int:
        """Approximate stored size (state + meta + seq), bytes."""
        return len(self.state) + len(self.meta_json) + len(str(self.seq))


@dataclass(frozen=True)
class BrokenRecord:
    """A key that exists but is not a usable record.

    ``quarantined``: a tombstone left by :meth:`StateStore.quarantine`
    (``reason`` is the quarantine reason). Otherwise the record envelope is
    unreadable (wrong Redis type, missing or non-integer seq, bad meta JSON);
    ``seq`` is the stored seq when it could still be read.
    """

    reason: str
    seq: int | None = None
    quarantined: bool = False


@dataclass
class SaveResult:
    """Outcome of :meth:`StateStore.save_many`, by series id.

    ``stale``: the stored seq is already >= the new one (a duplicate or a
    replay; nothing lost). ``conflict``: the stored seq moved since the load but
    is still below the new one (another writer is mid-way). ``gap``: the stored
    seq is below what was loaded, or the key vanished (Redis lost writes).
    ``blocked``: quarantined or unreadable record (value = reason).
    Dict values are the stored seq (-1 absent, None unreadable).
    """

    applied: list[str] = field(default_factory=list)
    stale: dict[str, int] = field(default_factory=dict)
    conflict: dict[str, int] = field(default_factory=dict)
    gap: dict[str, int] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        return len(self.stale) + len(self.conflict) + len(self.gap) + len(self.blocked)


def cas_args(records: Mapping[str, StateRecord], expected: Mapping[str, int],
             replace_broken: Iterable[str] = ()) -> dict[str, tuple]:
    """The compare-and-set arguments of :meth:`StateStore.save_many`, per series:
    ``(seq, expected seq, state bytes, meta JSON, "1" | "0" replace broken)``."""
    missing = [s for s in records if s not in expected]
    if missing:
        raise ValueError(f"save_many: no expected seq for {missing[:5]}")
    replace = set(replace_broken)
    return {sid: (r.seq, expected[sid], r.state, r.meta_json, "1" if sid in replace else "0")
            for sid, r in records.items()}


class StateStore:
    """Batched, compare-and-set access to worker states.

    ``redis_client``: ``redis.Redis`` or ``redis.cluster.RedisCluster`` (binary
    responses, i.e. ``decode_responses=False``). ``key_prefix``: ``sf`` by default.
    """

    _FIELDS = ("seq", "state", "meta", "quarantined")

    def __init__(self, redis_client, key_prefix: str = "sf"):
        self.redis = redis_client
        self.prefix = key_prefix
        self._cas_sha = self.redis.script_load(CAS_SCRIPT)
        self._quarantine_sha = self.redis.script_load(QUARANTINE_SCRIPT)
        self.last_round_trip_s = 0.0  # duration of the last load_many/save_many, seconds

    def key(self, series_id: str) -> str:
        return f"{self.prefix}:{{{series_id}}}:state"

    def quarantine_key(self, series_id: str) -> str:
        return f"{self.prefix}:{{{series_id}}}:quarantine"

    # -- reads ---------------------------------------------------------------

    def load_many(self, series_ids: Iterable[str]) -> dict[str, StateRecord | BrokenRecord | None]:
        """Load records in one pipelined round trip. None = no record."""
        return self.parse_many(self.fetch_many(series_ids))

    def fetch_many(self, series_ids: Iterable[str]) -> dict[str, Any]:
        """The raw replies of :meth:`load_many`'s round trip, not yet parsed (the worker's read-ahead
        thread fetches, the model's thread parses: a thread running Python code would slow the
        model's, which needs the same GIL between its kernels)."""
        sids = list(dict.fromkeys(series_ids))
        if not sids:
            return {}
        t0 = time.perf_counter()
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hmget(self.key(sid), self._FIELDS)
        replies = pipe.execute(raise_on_error=False)
        self.last_round_trip_s = time.perf_counter() - t0
        return dict(zip(sids, replies))

    @staticmethod
    def parse_many(replies: dict[str, Any]) -> dict[str, StateRecord | BrokenRecord | None]:
        """Records of :meth:`fetch_many`'s replies (raises a connection error a reply holds)."""
        return {sid: _parse(reply) for sid, reply in replies.items()}

    def load(self, series_id: str) -> StateRecord | BrokenRecord | None:
        return self.load_many([series_id])[series_id]

    # -- writes --------------------------------------------------------------

    def save_many(
        self,
        records: Mapping[str, StateRecord],
        expected: Mapping[str, int],
        replace_broken: Iterable[str] = (),
    ) -> SaveResult:
        """Compare-and-set ``records`` in one pipelined round trip.

        ``expected[sid]`` is the seq the record was computed from (the loaded
        seq; -1 when no record existed). ``replace_broken``: series whose
        unreadable record may be overwritten (re-initialisation after
        corruption); a readable record is never overwritten that way.
        """
        return self.save_args(cas_args(records, expected, replace_broken))

    def save_args(self, args: dict[str, tuple]) -> SaveResult:
        """:meth:`save_many` of :func:`cas_args` built earlier (plain data: the worker's
        publisher process writes what the model process computed)."""
        sids = list(args)
        if not sids:
            return SaveResult()
        t0 = time.perf_counter()
        replies = self._evalsha_many(self._cas_sha, CAS_SCRIPT, {sid: [self.key(sid)] for sid in sids}, args)
        self.last_round_trip_s = time.perf_counter() - t0
        result = SaveResult()
        for sid, (code, stored) in zip(sids, replies):
            stored = None if stored == -2 else int(stored)
            if code == APPLIED:
                result.applied.append(sid)
            elif code == STALE:
                result.stale[sid] = stored
            elif code == CONFLICT:
                result.conflict[sid] = stored
            elif code == GAP:
                result.gap[sid] = stored
            elif code == QUARANTINED:
                result.blocked[sid] = "quarantined"
            else:
                result.blocked[sid] = "unreadable record"
        return result

    def quarantine(self, series_id: str, reason: str) -> bool:
        """Move the series' record to ``…:quarantine`` (with ``reason``) and leave
        a tombstone that refuses every later write. Returns False if the series
        was already quarantined. Lift it by deleting both keys."""
        keys = [self.key(series_id), self.quarantine_key(series_id)]
        (reply,) = self._evalsha_many(self._quarantine_sha, QUARANTINE_SCRIPT, {series_id: keys},
                                      {series_id: (reason,)})
        return bool(reply)

    def _evalsha_many(self, sha: str, script: str, keys: dict[str, list[str]], args: dict[str, tuple]) -> list:
        """EVALSHA per series in one pipeline; reloads the script once if Redis
        lost it (restart) and retries only the commands that failed that way."""
        sids = list(keys)
        replies: list[Any] = [None] * len(sids)
        todo = list(range(len(sids)))
        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo:
                k = keys[sids[i]]
                # execute_command: redis-py's ClusterPipeline blocks .evalsha() but routes
                # EVALSHA by its keys; all keys of one call share a hash tag.
                pipe.execute_command("EVALSHA", sha, len(k), *k, *args[sids[i]])
            out = pipe.execute(raise_on_error=False)
            retry = []
            for i, r in zip(todo, out):
                if isinstance(r, NoScriptError) and attempt == 0:
                    retry.append(i)
                elif isinstance(r, Exception):
                    raise r
                else:
                    replies[i] = r
            if not retry:
                break
            self.redis.script_load(script)
            todo = retry
        return replies


def _parse(reply: Any) -> StateRecord | BrokenRecord | None:
    if isinstance(reply, ResponseError):
        return BrokenRecord(f"unreadable record: {reply}")
    if isinstance(reply, Exception):
        raise reply
    seq_raw, state, meta, quarantined = reply
    seq = _int_or_none(seq_raw)
    if quarantined is not None:
        return BrokenRecord(quarantined.decode("utf-8", "replace"), seq=seq, quarantined=True)
    if seq_raw is None and state is None and meta is None:
        return None
    if seq is None:
        return BrokenRecord(f"seq field is {seq_raw!r}, not an integer")
    if state is None or meta is None:
        return BrokenRecord(f"record without {'state' if state is None else 'meta'} field", seq=seq)
    try:
        m = StateMeta.from_json(meta)
    except (ValueError, KeyError, TypeError) as e:
        return BrokenRecord(f"unreadable meta: {e}", seq=seq)
    return StateRecord(seq, bytes(state), m)


def _int_or_none(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None
