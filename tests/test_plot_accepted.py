"""`streamflame plot` on a live pipeline (real Tansu broker and redis-server, ingest and
worker in threads) draws only what ingest accepted, on a time axis, with gaps as breaks,
and reads a key's newest records from the end of its partition, not whole topics.

- a series with a gap and with a late and a duplicate observation (both go to the DLQ)
  inside the plotted window: the plotted history is exactly the accepted grid (NaN in
  the gap, the rejected values nowhere); x values are times;
- the drawn line is broken at the gap, the axis is a date axis; the PNG is written;
- ``read_key_tail`` returns a key's newest records after reading a small part of a long
  partition (and the whole key history when asked for everything);
- the demo's fan chart: times on the x-axis, a break at a gap.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from test_cli_tools import LOG_LINE, check_png, pipeline, run_json  # noqa: F401 (fixture)
from test_pipeline_e2e import read_topic
from test_worker import model_dir  # noqa: F401 (fixture)

from streamflame.adapters.kafka_io import key_partition
from streamflame.cli import main as cli
from streamflame.core.constants import PATCH_LEN
from streamflame.messages import decode_dead_letter
from streamflame.tools.keytail import read_key_tail
from streamflame.tools.plot import from_stack

T0 = 1_704_067_200_000
FREQ = 600_000                           # the pipeline fixture infers the grid: 10 min
N_PATCHES = 8
SID = "plot-0"
GAP = range(250, 271)                    # missing slots, inside patch 5
LATE = (245, 1e6)                        # slot of patch 5, sent after patch 5 closed
DUP = (300, -1e6)                        # slot 300 again, right after it was sent
HISTORY = 3 * PATCH_LEN                  # patches 5-7 of the latest forecast (after patch 7)


def _values(i: int) -> np.ndarray:
    n = N_PATCHES * PATCH_LEN + 5
    return np.round(20 + 4 * np.sin(np.arange(n) / (6 + i)), 6)


def _messages() -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(4):
        sid, v = f"plot-{i}", _values(i)
        for k in range(len(v)):
            if sid == SID and k in GAP:
                continue
            out.append((sid.encode(), json.dumps({"series_id": sid, "timestamp": T0 + k * FREQ,
                                                  "value": float(v[k])}).encode()))
            if sid == SID and k == DUP[0]:
                for slot, value in (DUP, LATE):
                    out.append((sid.encode(), json.dumps({"series_id": sid, "timestamp": T0 + slot * FREQ,
                                                          "value": value}).encode()))
    return out


def test_plot_draws_accepted_observations_on_a_time_axis(pipeline, tmp_path, capsys):  # noqa: F811
    cfg = pipeline
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=5)
    for key, raw in _messages():
        prod.send(cfg.topics.observations, key=key, value=raw)
    prod.flush()
    prod.close()
    read_topic(cfg.kafka.bootstrap, cfg.topics.forecasts, want=4 * N_PATCHES, timeout=90)
    dead = [decode_dead_letter(r.value) for r in read_topic(cfg.kafka.bootstrap, cfg.topics.dlq, want=2)]
    assert sorted(d.reason for d in dead) == ["duplicate", "late"] and {d.series_id for d in dead} == {SID}

    # The newest records of the series' partitions are not StreamFlame messages: left out.
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
    for topic in (cfg.topics.forecasts, cfg.topics.patches):
        prod.send(topic, key=SID.encode(), value=b"not a message")
    prod.flush()
    prod.close()

    panel = from_stack(cfg, SID, HISTORY)
    origin = T0 + (N_PATCHES * PATCH_LEN - 1) * FREQ
    slots = np.arange(N_PATCHES * PATCH_LEN - HISTORY, N_PATCHES * PATCH_LEN)
    assert panel["hist_x"].dtype.kind == "M"
    np.testing.assert_array_equal(panel["hist_x"], (T0 + slots * FREQ).astype("datetime64[ms]"))
    want = _values(0)[slots].astype(float)
    want[np.isin(slots, list(GAP))] = np.nan
    np.testing.assert_array_equal(panel["hist_y"], want)          # the rejected 1e6 / -1e6 are not there
    assert panel["fc_x"][0] == np.datetime64(origin + FREQ, "ms") and len(panel["actual_x"]) == 0

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from streamflame.tools.viz import fan_chart

    fig, ax = plt.subplots()
    fan_chart(ax, **panel)
    line = ax.lines[0]
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.asarray(line.get_xdata()).dtype.kind == "M"
    gap = np.flatnonzero(np.isnan(y))
    assert len(gap) == len(GAP) and np.all(np.diff(gap) == 1)   # one break, where the gap is
    assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    plt.close(fig)

    rd = run_json(tmp_path / "run", cfg)
    png = tmp_path / "plot.png"
    capsys.readouterr()
    assert cli(["plot", SID, "--run-dir", str(rd), "--history", str(HISTORY), "-o", str(png)]) == 0
    # (the fixture's worker thread may still log a batch line to the same stdout)
    assert [x for x in capsys.readouterr().out.splitlines() if not LOG_LINE.match(x)] == [str(png)]
    check_png(png)


@pytest.fixture()
def long_topic(make_topics, embedded_kafka):
    """A 2-partition topic with 6,000 records of 30 keys, value = b"key:i" (i-th of the key)."""
    topic = make_topics(partitions=2).patches
    prod = KafkaProducer(bootstrap_servers=embedded_kafka, linger_ms=20)
    for i in range(200):
        for k in range(30):
            key = f"key-{k}".encode()
            prod.send(topic, key=key, value=b"%s:%d" % (key, i), partition=key_partition(key, 2))
    prod.flush()
    prod.close()
    return topic


def test_read_key_tail_reads_a_small_part_of_the_partition(long_topic, embedded_kafka):
    consumer = KafkaConsumer(bootstrap_servers=embedded_kafka, enable_auto_commit=False)
    try:
        key = b"key-7"
        tail = read_key_tail(consumer, long_topic, key, enough=lambda recs: len(recs) >= 5)
        size = tail.end - tail.partition_start
        assert tail.partition == key_partition(key, 2) and size == 200 * sum(
            key_partition(f"key-{k}".encode(), 2) == tail.partition for k in range(30))
        assert [r.value for r in tail.records][-5:] == [b"key-7:%d" % i for i in range(195, 200)]
        assert all(r.key == key for r in tail.records)
        assert tail.read < size // 4, (tail.read, size)                # not the whole partition

        everything = read_key_tail(consumer, long_topic, key, enough=lambda recs: False)
        assert [r.value for r in everything.records] == [b"key-7:%d" % i for i in range(200)]
        assert everything.start == everything.partition_start
    finally:
        consumer.close()


def test_demo_fan_chart_has_times_and_breaks_at_gaps(tmp_path):
    """The demo's fan chart: time on the x-axis (the series' own grid, tz-aware here), the
    history ending at the forecast's origin, a missing stretch drawn as a break."""
    import pandas as pd

    from streamflame.data.series import Series
    from streamflame.tools.demo import _fan_chart, fan_chart_panels
    from streamflame.messages import ForecastMessage
    from streamflame.tools.viz import with_breaks

    v = 20 + np.sin(np.arange(500) / 7)
    v[100:130] = np.nan
    s = Series("tank", pd.Timestamp("2024-03-01", tz="Europe/Berlin"), "10min", v)
    fc = ForecastMessage.build(series_id="tank", seq=8, origin_ms=0, freq_ms=FREQ, mean=np.full(48, 20.0),
                               quantile_levels=[0.1, 0.9], quantiles=np.array([[19.0] * 48, [21.0] * 48]),
                               model_id="m")
    (panel,) = fan_chart_panels([s], {"tank": fc}, n_obs=480)
    ts = s.timestamps()
    end = 9 * PATCH_LEN                                     # 432: the whole history from slot 0
    assert list(panel["hist_x"]) == list(ts[end - 432:end])
    assert panel["fc_x"][0] == ts[end - 1] + pd.Timedelta("10min") and len(panel["fc_x"]) == 48
    x, y = with_breaks(panel["hist_x"], panel["hist_y"])
    assert x.dtype.kind == "M" and np.isnan(y).sum() == 30
    assert x[0] == np.datetime64("2024-03-01T00:00") + np.timedelta64(10 * (end - 432), "m")  # wall time
    check_png(_fan_chart([s], {"tank": fc}, 480, tmp_path / "demo.png"))
