"""The worker's batches in their two stages: read (:class:`ReadBatch`) and computed (:class:`Computed`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from streamflame.pipeline.publisher import WorkerJob
from streamflame.pipeline.worker.batch import BatchResult, PatchRecord

@dataclass
class ReadBatch:
    """Patch records polled since the last batch was handed over, and where they start and end."""

    records: list[PatchRecord] = field(default_factory=list)
    bad: list[tuple] = field(default_factory=list)  # (ConsumerRecord, detail)
    start: dict = field(default_factory=dict)        # TopicPartition -> first offset seen
    end: dict = field(default_factory=dict)          # TopicPartition -> last offset + 1
    first_at: float = 0.0                            # monotonic time of the first record

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
