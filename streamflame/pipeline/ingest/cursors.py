"""Ingest cursors in Redis: the one place that reads and writes ``sf:{<sid>}:ingest``.

Layout (one hash per series; the hash tag keeps a series' keys in one Redis
Cluster slot)::

    sf:{<sid>}:ingest   seq     ascii int: IngestCursor.next_seq
                        n       ascii int: IngestCursor.n_covered
                        cursor  IngestCursor.to_json()
                        alerted ascii int: key of the last published alert event (2 x the
                                slot that caused it, + 1 for a dropout found by silence;
                                IngestCursor.alerted; only ever raised)

Loads are one pipelined round trip of ``HGET`` per batch of series. Writes are
one pipelined round trip of ``EVALSHA`` of a compare-and-set script per key: a
cursor is written only if its version ``(seq, n)`` is not below the stored one,
so a stale consumer (one that lost its partitions but has not noticed yet) can
never move a series backwards. An equal version is rewritten (idempotent).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from redis.exceptions import NoScriptError

from streamflame.pipeline.ingest.cursor import CursorDecodeError, IngestCursor

CURSOR_CAS_SCRIPT = r"""
-- KEYS[1] cursor hash; ARGV: seq, n, cursor JSON. Returns 1 written, 0 refused (stored version higher).
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'hash' then
  local cur = redis.call('HMGET', KEYS[1], 'seq', 'n')
  local s, n = tonumber(cur[1]), tonumber(cur[2])
  local ns, nn = tonumber(ARGV[1]), tonumber(ARGV[2])
  if s and n and (ns < s or (ns == s and nn < n)) then return 0 end
elseif t ~= 'none' then
  redis.call('DEL', KEYS[1])  -- not a cursor (unreadable anyway): replace it
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'n', ARGV[2], 'cursor', ARGV[3])
return 1
"""


ALERTED_MAX_SCRIPT = r"""
-- KEYS[1] cursor hash; ARGV[1] slot. Raises the 'alerted' field to ARGV[1] (never lowers it).
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'hash' and t ~= 'none' then return 0 end
local a = tonumber(redis.call('HGET', KEYS[1], 'alerted'))
if a and a >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'alerted', ARGV[1])
return 1
"""


@dataclass
class CursorSaveResult:
    written: int = 0
    refused: list[str] = field(default_factory=list)


class CursorStore:
    """Pipelined loads and compare-and-set writes of :class:`IngestCursor` s."""

    def __init__(self, redis_client, key_prefix: str = "sf"):
        self.redis = redis_client
        self.key_prefix = key_prefix
        self._sha = redis_client.script_load(CURSOR_CAS_SCRIPT)  # on every primary of a cluster
        self._alerted_sha = redis_client.script_load(ALERTED_MAX_SCRIPT)

    def key(self, series_id: str) -> str:
        return f"{self.key_prefix}:{{{series_id}}}:ingest"

    def load_many(self, series_ids: Iterable[str]) -> dict[str, IngestCursor | CursorDecodeError | None]:
        """``{sid: cursor | None (absent) | CursorDecodeError (unreadable)}`` in one round trip."""
        sids = list(series_ids)
        if not sids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hmget(self.key(sid), "cursor", "alerted")
        # a key of another type (someone wrote a string there) answers WRONGTYPE
        replies = pipe.execute(raise_on_error=False)
        out: dict[str, IngestCursor | CursorDecodeError | None] = {}
        for sid, reply in zip(sids, replies):
            raw, alerted = (reply, None) if isinstance(reply, Exception) else reply
            if raw is None and alerted is not None:  # alert events published before the first patch
                out[sid] = IngestCursor(series_id=sid, alerted=int(alerted))
            elif raw is None:
                out[sid] = None
            elif isinstance(raw, Exception):
                out[sid] = CursorDecodeError(f"ingest cursor of {sid!r} is unreadable: {raw}")
            else:
                try:
                    c = IngestCursor.from_json(raw)
                except CursorDecodeError as e:
                    out[sid] = e
                    continue
                if alerted is not None:
                    c.alerted = int(alerted)
                out[sid] = c if c.series_id == sid else CursorDecodeError(
                    f"ingest cursor under the key of {sid!r} belongs to {c.series_id!r}")
        return out

    def save_many(self, cursors: Iterable[IngestCursor]) -> CursorSaveResult:
        """Compare-and-set every cursor in one pipelined round trip."""
        return self.save_args(cursor_args(cursors))

    def save_args(self, args: list[tuple[str, int, int, bytes]]) -> CursorSaveResult:
        """:meth:`save_many` of :func:`cursor_args` taken earlier (plain data: ingest's
        publisher process writes the cursors its consumer took after assembling)."""
        result = CursorSaveResult()
        if not args:
            return result
        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            for sid, seq, n, raw in args:
                # execute_command: redis-py's ClusterPipeline refuses .evalsha() but routes
                # EVALSHA by its key (as StateStore does).
                pipe.execute_command("EVALSHA", self._sha, 1, self.key(sid), seq, n, raw)
            try:
                replies = pipe.execute()
                break
            except NoScriptError:  # script cache empty (server restarted): load and retry once
                if attempt:
                    raise
                self._sha = self.redis.script_load(CURSOR_CAS_SCRIPT)
        for (sid, _, _, _), r in zip(args, replies):
            if int(r) == 1:
                result.written += 1
            else:
                result.refused.append(sid)
        return result

    def raise_alerted(self, marks: list[tuple[str, int]]) -> int:
        """Raise each series' ``alerted`` slot (one pipelined round trip); returns how many rose."""
        if not marks:
            return 0
        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            for sid, slot in marks:
                pipe.execute_command("EVALSHA", self._alerted_sha, 1, self.key(sid), slot)
            try:
                return sum(int(r) for r in pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                self._alerted_sha = self.redis.script_load(ALERTED_MAX_SCRIPT)
        return 0


def cursor_args(cursors: Iterable[IngestCursor]) -> list[tuple[str, int, int, bytes]]:
    """The compare-and-set arguments of :meth:`CursorStore.save_many`:
    ``(series_id, next_seq, n_covered, cursor JSON)`` per cursor."""
    return [(c.series_id, c.next_seq, c.n_covered, c.to_json()) for c in cursors]
