"""``streamflame bench pipeline --read-ahead-compare``: stage 3 (the worker end to end) without and
with ``worker.read_ahead`` in the same run, on the same patches, alternating which goes first
round by round (this machine's speed drifts by 10-30 % over minutes). Each run has its own consumer
group and Redis key prefix, so each starts with no state records. ``--state-cache 0`` makes every
patch after a series' first read its record from Redis (the regime where reads matter: a worker
whose series outnumber ``worker.state_cache_series``, or right after a start or a rebalance)."""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Callable

from streamflame.config import ServiceConfig


@dataclass
class WorkerRun:
    """One worker run of ``run_worker`` (bench/pipeline.py)."""

    forecasts_per_s: float
    load_ms_per_batch: float     # Redis reads in the model's thread (with read-ahead: the wait for them)
    read_ahead: int              # series whose record came from a read-ahead
    mean_batch: float

    @property
    def load_share(self) -> float:
        """The Redis reads' share of the worker's time (a batch takes mean_batch / rate)."""
        return self.load_ms_per_batch / (1000 * self.mean_batch / self.forecasts_per_s)


@dataclass
class ReadAheadRound:
    serial: WorkerRun
    ahead: WorkerRun
    ahead_first: bool

    @property
    def ratio(self) -> float:
        return self.ahead.forecasts_per_s / self.serial.forecasts_per_s


def compare(make_cfg: Callable[[int, bool], ServiceConfig], n_forecasts: int, repeats: int,
            run_worker: Callable[[ServiceConfig, int], dict]) -> list[ReadAheadRound]:
    """``repeats`` rounds of both runs; ``make_cfg(round, read_ahead)`` gives each run's config."""
    rounds = []
    for r in range(repeats):
        runs: dict[bool, WorkerRun] = {}
        order = (False, True) if r % 2 == 0 else (True, False)
        for ahead in order:
            wk = run_worker(make_cfg(r, ahead), n_forecasts)
            runs[ahead] = WorkerRun(wk["forecasts_per_s"], 1000 * wk["load_s_per_batch"], wk["read_ahead"],
                                    wk["mean_batch"])
        rnd = ReadAheadRound(serial=runs[False], ahead=runs[True], ahead_first=order[0])
        rounds.append(rnd)
        print(f"read-ahead round {r + 1}/{repeats} ({'read-ahead' if rnd.ahead_first else 'serial'} first): "
              f"serial {rnd.serial.forecasts_per_s:,.1f}, read-ahead {rnd.ahead.forecasts_per_s:,.1f} forecasts/s "
              f"(x{rnd.ratio:.3f}); Redis reads in the model's thread per batch: serial "
              f"{rnd.serial.load_ms_per_batch:.1f} ms ({100 * rnd.serial.load_share:.2f} % of its time), read-ahead "
              f"{rnd.ahead.load_ms_per_batch:.1f} ms ({100 * rnd.ahead.load_share:.2f} %) "
              f"({rnd.ahead.read_ahead:,} states read ahead)", flush=True)
    return rounds


def report(rounds: list[ReadAheadRound]) -> None:
    serial = median(x.serial.forecasts_per_s for x in rounds)
    ahead = median(x.ahead.forecasts_per_s for x in rounds)
    ratios = sorted(x.ratio for x in rounds)
    print(f"\nworker end to end, median of {len(rounds)} rounds: serial {serial:,.1f} forecasts/s, read-ahead "
          f"{ahead:,.1f} forecasts/s; read-ahead / serial per round: {', '.join(f'{x:.3f}' for x in ratios)} "
          f"(median {median(ratios):.3f}); Redis reads in the model's thread per batch (median): serial "
          f"{median(x.serial.load_ms_per_batch for x in rounds):.1f} ms "
          f"({100 * median(x.serial.load_share for x in rounds):.2f} % of its time), read-ahead "
          f"{median(x.ahead.load_ms_per_batch for x in rounds):.1f} ms "
          f"({100 * median(x.ahead.load_share for x in rounds):.2f} %); mean batch "
          f"{median(x.serial.mean_batch for x in rounds):.0f}")
    print(f"SUMMARY worker_serial_forecasts_per_s={serial:.1f} worker_read_ahead_forecasts_per_s={ahead:.1f} "
          f"read_ahead_ratio={median(ratios):.3f}")
