"""Short versions of `streamflame chaos` (docs/reliability.md): the real embedded
stack (Tansu, redis-server, `python -m streamflame ingest|worker` processes), a
seeded stream of 20,000 observations over 60 series, faults injected at seeded
moments, and the end state checked against the uninterrupted in-process
reference: every state record byte-identical, every patch holding exactly the
produced observations, every forecast present with identical duplicates, no
process exiting on its own. The full-size runs are the commands in
docs/reliability.md. Each test takes ~25-40 s on two cores."""
from __future__ import annotations

import pytest

from streamflame.faults.chaos import format_report, run_scenario
from streamflame.faults.stream import ChaosOptions

SMALL = {"observations": 20_000, "series": 60, "produce_s": 12.0, "timeout_s": 90.0, "quiet": True}


def _run(tmp_path, scenario: str, kills: int, **kw) -> dict:
    o = ChaosOptions(scenario, kills=kills, run_dir=tmp_path / scenario, **{**SMALL, **kw})
    r = run_scenario(o)
    print(format_report(r))
    assert r["ok"], format_report(r)
    assert r["series_identical_to_reference"] == r["series_with_patches"] == 60
    assert r["patches_distinct"] == r["patches_expected"] and r["forecasts_distinct"] == r["forecasts_expected"]
    assert r["observations_covered_by_patches"] == r["observations_in_complete_patches"]
    return r


def test_crash_consistency_under_sigkill_of_worker_and_ingest(tmp_path):
    r = _run(tmp_path, "crash", kills=4)
    kills = [f for f in r["faults"] if f["action"].startswith("kill-")]
    assert len(kills) == 4 and {f["action"] for f in kills} == {"kill-worker", "kill-ingest"}


def test_redis_sigkill_with_lost_aof_tail_recovers(tmp_path):
    r = _run(tmp_path, "redis", kills=2)
    faults = r["faults"]
    assert [f["action"] for f in faults] == ["kill-redis", "kill-redis+apps"]
    assert all(f.get("down_s") is not None for f in faults), "redis came back each time"


def test_durable_broker_sigkill_and_restart_loses_nothing(tmp_path):
    r = _run(tmp_path, "broker", kills=2)
    assert r["observation_records_lost_by_broker"] == 0
    assert all(f.get("down_s") is not None for f in r["faults"])


@pytest.mark.parametrize("cycles", [2])
def test_rebalance_one_two_one_workers(tmp_path, cycles):
    r = _run(tmp_path, "rebalance", kills=cycles, produce_s=16.0)
    actions = [f["action"] for f in r["faults"]]
    assert actions == ["scale-up", "scale-down-term", "scale-up", "scale-down-kill"]
    assert r["log_counts"].get("worker_assignments", 0) >= 4
