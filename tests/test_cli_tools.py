"""`streamflame replay`, `tail` and `plot` against a real Tansu broker and redis-server:
a CSV replayed into the observations topic (single and batch messages, a rate),
the forecasts a real ingest + worker make from it printed by `tail` and drawn by
`plot`, and `plot` from an eval forecast file."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from test_pipeline_e2e import read_topic
from test_worker import model_dir  # noqa: F401 (fixture)

from streamflame.cli import main as cli
from streamflame.config import GroupSettings, ServiceConfig
from streamflame.core.timefmt import iso_ms
from streamflame.messages import AlertMessage, ForecastMessage, decode_forecast, decode_observation_message, encode
from streamflame.pipeline.ingest.consumer import IngestConsumer
from streamflame.pipeline.worker.worker import Worker

T0 = pd.Timestamp("2024-01-01")
STEP = pd.Timedelta("10min")

LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \[")   # a structlog console line


def write_csv(path, n=(150, 110), drop=(7, 8, 60)):
    """Long CSV, rows shuffled; series 0 misses rows `drop` (gaps) and has one empty value."""
    rng = np.random.default_rng(0)
    frames = []
    for i, k in enumerate(n):
        t = pd.DatetimeIndex(T0 + STEP * np.arange(k))
        v = 20 + 5 * np.sin(np.arange(k) / 9 + i) + rng.normal(0, 0.3, k)
        df = pd.DataFrame({"series_id": f"tank-{i}", "timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": v})
        if i == 0:
            df = df.drop(index=list(drop))
            df.loc[20, "value"] = np.nan
        frames.append(df)
    df = pd.concat(frames).sample(frac=1.0, random_state=1)
    df.to_csv(path, index=False)
    return df


def epoch_ms(times) -> list[int]:
    """Epoch milliseconds of pandas times of any resolution (pandas 3 parses text to microseconds)."""
    t = pd.DatetimeIndex(times)
    return list((t - pd.Timestamp(0, tz=t.tz)) // pd.Timedelta("1ms"))


def run_json(run_dir, cfg: ServiceConfig):
    """A run directory as `streamflame up --detach` leaves it (only what the tools read)."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({
        "kafka_bootstrap": cfg.kafka.bootstrap, "redis_url": cfg.redis.url,
        "topics": cfg.topics.model_dump(), "config": None}))
    return run_dir


def observations(cfg, want):
    out = []
    for r in read_topic(cfg.kafka.bootstrap, cfg.topics.observations, want=want):
        msgs = decode_observation_message(r.value, max_series_id_len=256, max_message_bytes=10**6, max_batch=10**5)
        out.append((r.key.decode(), json.loads(r.value), msgs))
    return out


def test_replay_single_and_batch_messages_rate_and_run_json(service_config, tmp_path, capsys):
    cfg = service_config
    df = write_csv(tmp_path / "obs.csv")
    expected = df.dropna(subset=["value"])
    rd = run_json(tmp_path / "run", cfg)

    t0 = time.monotonic()
    assert cli(["replay", str(tmp_path / "obs.csv"), "--run-dir", str(rd), "--rate", "500", "--no-progress"]) == 0
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    assert f"sent {len(expected)} observations of 2 series in {len(expected)} messages" in out
    assert took >= (len(expected) - 1) / 500 * 0.95
    got = observations(cfg, len(expected))
    assert len(got) == len(expected)
    assert all(set(doc) == {"series_id", "timestamp", "value"} for _, doc, _ in got)   # the single form
    by_sid: dict[str, list] = {}
    for key, _, msgs in got:
        (o,) = msgs
        assert o.series_id == key
        by_sid.setdefault(key, []).append((o.timestamp_ms, o.value))
    for sid, rows in by_sid.items():
        assert [t for t, _ in rows] == sorted(t for t, _ in rows)  # time order per series
        want = expected[expected.series_id == sid].sort_values("timestamp")
        assert [t for t, _ in rows] == epoch_ms(pd.to_datetime(want.timestamp))
        np.testing.assert_allclose([v for _, v in rows], want.value.to_numpy())
    # Sent interleaved in time across series, as live sensors would send.
    from streamflame.data.loader import load_table
    from streamflame.tools.replay import plan
    order = [(sid, int(ts[0])) for _, sid, ts, _ in plan(load_table(tmp_path / "obs.csv"), 1)]
    assert [sid for sid, _ in order[:4]] == ["tank-0", "tank-1", "tank-0", "tank-1"]
    assert [t for _, t in order] == sorted(t for _, t in order)

    # Batch form, through the real entry point (a subprocess), --config instead of run.json.
    cfg2 = cfg.model_copy(update={"topics": cfg.topics.model_copy(update={"observations": cfg.topics.observations + "b"})})
    from streamflame.config import dump_yaml
    conf = tmp_path / "c.yaml"
    conf.write_text(dump_yaml(cfg2.effective(mask_secrets=False)))
    p = subprocess.run([sys.executable, "-m", "streamflame", "replay", str(tmp_path / "obs.csv"), "--config", str(conf),
                        "--batch", "48", "--series", "tank-1"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().startswith("sent 110 observations of 1 series in 3 messages")
    assert "100.0% 110/110 obs" in p.stderr  # the progress bar
    got = observations(cfg2, 3)
    assert [len(m) for _, _, m in got] == [48, 48, 14] and all("timestamps" in d for _, d, _ in got)
    assert [o.timestamp_ms for _, _, m in got for o in m] == list(
        epoch_ms(T0 + STEP * np.arange(110)))

    # Clear errors.
    assert cli(["replay", str(tmp_path / "nope.csv"), "--run-dir", str(rd)]) == 1
    assert cli(["replay", str(tmp_path / "obs.csv"), "--run-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "nope.csv: no such file" in err and "no stack found" in err


@pytest.fixture()
def pipeline(service_config, model_dir, redis_client):  # noqa: F811
    """Ingest + worker (tiny model, horizon 24) running in threads on the test's topics."""
    cfg = service_config.model_copy(update={
        "worker": service_config.worker.model_copy(update={"model_path": str(model_dir), "batch_deadline_ms": 30,
                                                           "device": "cpu"}),
        "defaults": GroupSettings(horizon=24, num_samples=20),
    })
    ingest, worker = IngestConsumer(cfg, redis_client=redis_client), Worker(cfg)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (ingest, worker)]
    for t in threads:
        t.start()
    yield cfg
    ingest.stop()
    worker.stop()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


def test_tail_and_plot_forecasts_of_a_live_pipeline(pipeline, tmp_path, capsys):
    cfg = pipeline
    write_csv(tmp_path / "obs.csv")
    rd = run_json(tmp_path / "run", cfg)
    assert cli(["replay", str(tmp_path / "obs.csv"), "--run-dir", str(rd), "--batch", "10", "--no-progress"]) == 0
    # 150 grid points -> patches 0-2 of tank-0, 110 -> patches 0-1 of tank-1 (a patch closes
    # when an observation after it arrives).
    fcs = [decode_forecast(r.value) for r in read_topic(cfg.kafka.bootstrap, cfg.topics.forecasts, want=5, timeout=60)]
    keys = sorted((f.series_id, f.seq) for f in fcs)
    assert keys == [("tank-0", 0), ("tank-0", 1), ("tank-0", 2), ("tank-1", 0), ("tank-1", 1)]
    capsys.readouterr()

    assert cli(["tail", "--run-dir", str(rd), "--from-beginning", "--series", "tank-0", "--max", "3",
                "--timeout", "20", "--no-alerts"]) == 0  # forecasts only (ingest's alert episodes share the topic)
    # the in-process worker and ingest of the fixture log to the same stdout from their threads
    lines = [x for x in capsys.readouterr().out.splitlines() if not LOG_LINE.match(x)]
    assert len(lines) == 3 and all(x.startswith("FCST  tank-0  seq=") for x in lines)
    by_seq = {f.seq: f for f in fcs if f.series_id == "tank-0"}
    for line in lines:
        f = by_seq[int(line.split("seq=")[1].split()[0])]
        assert f"origin={f.origin}  H=24  mean=[" + " ".join(f"{v:.2f}" for v in f.mean[:4]) + "]" in line
        assert line.endswith(f"p10..p90=[{f.quantiles['0.1'][0]:.2f} {f.quantiles['0.9'][0]:.2f}]")

    png = tmp_path / "live.png"
    assert cli(["plot", "tank-0", "--run-dir", str(rd), "-o", str(png)]) == 0
    # (the fixture's worker thread may still log its last batch line to the same stdout)
    assert [x for x in capsys.readouterr().out.splitlines() if not LOG_LINE.match(x)] == [str(png)]
    check_png(png)
    assert cli(["plot", "tank-9", "--run-dir", str(rd), "-o", str(tmp_path / "x.png")]) == 1
    assert "no forecast for series 'tank-9'" in capsys.readouterr().err


def test_tail_alerts_highlighted_glob_and_max(service_config, tmp_path, capsys):
    from kafka import KafkaProducer

    cfg = service_config
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
    origin = 1_704_067_200_000
    for i, sid in enumerate(["pump-1", "valve-2", "pump-3"]):
        fc = ForecastMessage(series_id=sid, seq=i, origin=iso_ms(origin), origin_ms=origin, frequency="1min",
                             freq_ms=60_000, horizon=5, start=iso_ms(origin + 60_000), mean=[1.0, 2.0, 3.0, 4.0, 5.0],
                             quantiles={"0.05": [0.5] * 5, "0.5": [1.0] * 5, "0.95": [9.0] * 5}, model_id="m",
                             produced_at=iso_ms(origin))
        prod.send(cfg.topics.forecasts, key=sid.encode(), value=encode(fc))
    al = AlertMessage(series_id="pump-3", timestamp=iso_ms(origin + 120_000), timestamp_ms=origin + 120_000, value=12.5,
                      lower=0.5, upper=9.0, levels=(0.05, 0.95), forecast_seq=2, step=2, score=0.41, direction="above")
    prod.send(cfg.topics.alerts, key=b"pump-3", value=encode(al))
    prod.flush()
    prod.close()
    rd = run_json(tmp_path / "run", cfg)
    assert cli(["tail", "--run-dir", str(rd), "--from-beginning", "--series", "pump-*", "--timeout", "3",
                "--color", "always"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    (alert,) = [x for x in lines if "ALERT" in x]
    assert alert == ("\033[1m\033[31mALERT pump-3  2024-01-01T00:02:00Z  value=12.50  above [0.50, 9.00] "
                     "score=0.41  (forecast seq=2, step 2)\033[0m")
    fc_lines = sorted(x for x in lines if x.startswith("FCST"))
    assert fc_lines == [
        "FCST  pump-1  seq=0  origin=2024-01-01T00:00:00Z  H=5  mean=[1.00 2.00 3.00 4.00]  p5..p95=[0.50 9.00]",
        "FCST  pump-3  seq=2  origin=2024-01-01T00:00:00Z  H=5  mean=[1.00 2.00 3.00 4.00]  p5..p95=[0.50 9.00]"]
    assert cli(["tail", "--run-dir", str(rd), "--from-beginning", "--no-forecasts", "--max", "1", "--timeout", "10",
                "--color", "never"]) == 0
    assert capsys.readouterr().out.startswith("ALERT pump-3  2024-01-01T00:02:00Z")
    # Started at the end (default): nothing old is printed, what arrives next is.
    assert cli(["tail", "--run-dir", str(rd), "--timeout", "1.5"]) == 0
    assert capsys.readouterr().out == ""
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(cli(["tail", "--run-dir", str(rd), "--max", "1", "--timeout", "20"])))
    t.start()
    time.sleep(2.0)
    prod = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap)
    prod.send(cfg.topics.forecasts, key=b"valve-2", value=encode(fc.model_copy(update={"series_id": "valve-2", "seq": 7})))
    prod.flush()
    prod.close()
    t.join(30)
    assert rc == [0]
    assert capsys.readouterr().out.startswith("FCST  valve-2  seq=7  ")


def test_plot_from_eval_file(tmp_path, capsys):
    from streamflame.eval.run import main as eval_main

    write_csv(tmp_path / "data.csv")
    fc = tmp_path / "fc.csv"
    assert eval_main([str(tmp_path / "data.csv"), "--horizon", "12", "--windows", "2", "--output", str(fc),
                      "--model", "random", "--baselines", "none", "--min-history", "48"]) == 0
    table = pd.read_csv(fc)
    assert set(table.series_id) == {"tank-0", "tank-1"}
    png = tmp_path / "eval.png"
    capsys.readouterr()
    assert cli(["plot", "tank-0", "--eval", str(fc), "--data", str(tmp_path / "data.csv"), "-o", str(png)]) == 0
    assert capsys.readouterr().out.strip() == str(png)
    check_png(png)
    first = sorted(table[table.series_id == "tank-1"].origin.unique())[0]
    png2 = tmp_path / "eval2.png"
    assert cli(["plot", "tank-1", "--eval", str(fc), "--data", str(tmp_path / "data.csv"), "--origin", first,
                "-o", str(png2)]) == 0
    check_png(png2)
    assert cli(["plot", "tank-1", "--eval", str(fc), "--data", str(tmp_path / "data.csv"), "--origin", "1999-01-01",
                "-o", str(png2)]) == 1
    assert "has no origin '1999-01-01'" in capsys.readouterr().err
    assert cli(["plot", "tank-1", "--eval", str(fc)]) == 2


def check_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 15_000 < len(data) < 2_000_000
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (234, 900)
    # Something was drawn: the orange band and the red mean line colour pixels.
    rgb = img[..., :3]
    assert (np.abs(rgb - np.array([0.84, 0.15, 0.16])).sum(-1) < 0.1).sum() > 50       # tab:red mean
    assert ((rgb[..., 0] > 0.9) & (rgb[..., 1] > 0.7) & (rgb[..., 2] < 0.8)).sum() > 500  # orange bands


def test_replay_finds_the_stack_through_the_run_json_up_writes(service_config, tmp_path, capsys):
    """The run.json of a real EmbeddedStack (`streamflame up`; here on the session's broker
    and redis as external services) is enough for replay: no --config."""
    from streamflame.config import dump_yaml
    from streamflame.embedded.stack import EmbeddedStack

    cfg = service_config
    conf = tmp_path / "stack.yaml"
    conf.write_text(dump_yaml(cfg.effective(mask_secrets=False)))
    write_csv(tmp_path / "obs.csv", n=(30, 20), drop=())
    with EmbeddedStack(tmp_path / "run", config_path=conf) as stack:
        assert stack.run_json_path.is_file()
        env_cfg = os.environ.pop("STREAMFLAME_CONFIG", None)
        try:
            t0 = time.monotonic()
            # --speedup: 29 steps of 10 min = 17,400 s of data at 20,000x = 0.87 s.
            assert cli(["replay", str(tmp_path / "obs.csv"), "--run-dir", str(tmp_path / "run"), "--batch", "7",
                        "--no-progress", "--speedup", "20000"]) == 0
            took = time.monotonic() - t0
        finally:
            if env_cfg is not None:
                os.environ["STREAMFLAME_CONFIG"] = env_cfg
    assert "sent 49 observations of 2 series in 8 messages" in capsys.readouterr().out   # one value is empty
    # The last batch message of tank-0 ends at step 29 (the data's end) and is sent at 29 * 600 / 20000 s.
    assert 0.8 <= took < 10
    got = observations(cfg, 8)
    assert sum(len(m) for _, _, m in got) == 49 and {k for k, _, _ in got} == {"tank-0", "tank-1"}
