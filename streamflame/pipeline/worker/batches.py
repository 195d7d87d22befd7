"""The worker's batches in their two stages: read (:class:`ReadBatch`, with the states read ahead:
:class:`Prefetch`) and computed (:class:`Computed`)."""
from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterable

from streamflame.adapters.state.store import BrokenRecord, StateRecord, StateStore
from streamflame.pipeline.publisher import WorkerJob
from streamflame.pipeline.worker.batch import BatchResult, PatchRecord

Loaded = dict[str, StateRecord | BrokenRecord | None]


@dataclass
class Prefetch:
    """Records of a batch's series read from Redis while the batch before it was computed
    (``worker.read_ahead``, streamflame.pipeline.worker.readahead)."""

    future: Future                      # -> StateStore.fetch_many of ``series`` (raw replies)
    series: frozenset[str] = field(default_factory=frozenset)

    def take(self, wanted: Iterable[str]) -> tuple[Loaded, float]:
        """The read records of ``wanted`` (those read ahead, parsed here; the others are for the
        caller to load) and the seconds spent waiting for the read. Raises what the read raised."""
        t0 = time.perf_counter()
        got = self.future.result()
        waited = time.perf_counter() - t0
        return StateStore.parse_many({sid: got[sid] for sid in wanted if sid in self.series}), waited


@dataclass
class ReadBatch:
    """Patch records polled since the last batch was handed over, and where they start and end."""

    records: list[PatchRecord] = field(default_factory=list)
    bad: list[tuple] = field(default_factory=list)  # (ConsumerRecord, detail)
    start: dict = field(default_factory=dict)        # TopicPartition -> first offset seen
    end: dict = field(default_factory=dict)          # TopicPartition -> last offset + 1
    first_at: float = 0.0                            # monotonic time of the first record
    read_ahead: bool = False                         # begun by a read-ahead poll (worker.read_ahead)
    prefetch: Prefetch | None = None                 # its states read ahead, if any

    def __len__(self) -> int:
        return len(self.records) + len(self.bad)

    def add(self, tp, offset: int) -> None:
        if not self.start and not self.end:
            self.first_at = time.monotonic()
        self.start.setdefault(tp, offset)
        self.end[tp] = offset + 1


@dataclass
class Computed:
    """A batch after steps 1-2: what the publisher is to do, and what the outcome needs."""
    batch: ReadBatch
    res: BatchResult
    n_series: int
    n_misses: int
    redis_load_s: float
    t_start: float
    compute_s: float         # steps 1-2 and the job's encoding, in this process
    job: WorkerJob
    pipelinable: bool        # no rewind or quarantine decided: the next batch may be computed on it


def offset_ranges(start: dict, end: dict) -> dict[str, list[int]]:
    """Log context of a batch: ``{"<partition>": [first offset, last offset]}``."""
    return {str(tp.partition): [start[tp], end[tp] - 1] for tp in sorted(end, key=lambda t: t.partition)}
