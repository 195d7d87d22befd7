"""`streamflame eval`: rolling-origin forecasts of StreamFlame and baselines, and their scores.

    streamflame eval DATA --horizon H --windows W --output FORECASTS.csv
                     [--model PATH|default|random|none] [--baselines seasonal_naive,autoets,fracast]
                     [--metrics METRICS.csv|.json] [--freq F] [--tz TZ] [--num-samples 100] [--seed 0]
                     [--matmul float32|bf16|tf32]
    streamflame eval score FORECASTS.csv [MORE.csv ...] DATA [--metrics ...] [--freq F] [--tz TZ]

Windows: per series, the last W non-overlapping blocks of H grid steps counted back from the
end; windows whose history is shorter than --min-history are dropped (for every model).
StreamFlame streams each series once through its recurrent path (``update`` then
``forecast`` at every window origin, never re-encoding), exactly like the live service; the
forecast starts right after the last value fed, including a partial patch.
See docs/evaluation.md for the file contract and the metric definitions.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import structlog

from ..core.logs import configure_logging
from ..core.memory import retain_freed_memory
from ..data.loader import DataError, load_table
from ..data.series import Series, format_timestamp, seasonality
from .baselines import BASELINES
from .metrics import QUANTILES
from .scoring import CONTRACT_COLUMNS, QUANTILE_COLUMNS, ForecastFileError, Scores, format_summary, score

log = structlog.get_logger("streamflame.eval")

BASELINE_CONTEXT = 8192   # history points handed to a baseline (each uses at most this)
MODEL_NAME = "streamflame"


@dataclass
class Windows:
    """Forecast origins of one series as history lengths ``L`` (origin = grid index L-1), ascending."""

    series: Series
    lengths: list[int]


def window_lengths(n: int, horizon: int, windows: int, min_history: int) -> list[int]:
    """History lengths of the last ``windows`` blocks of ``horizon`` steps of a length-``n`` series.

    Block ``w`` (1 = last) covers grid indices ``[n - w*H, n - (w-1)*H)``; its history is the
    ``n - w*H`` points before it. Blocks with less than ``min_history`` history are dropped.
    Ascending order (the order a stream reaches them).
    """
    if horizon < 1 or windows < 1:
        raise ValueError("horizon and windows must be >= 1")
    return [n - w * horizon for w in range(windows, 0, -1) if n - w * horizon >= max(1, min_history)]


def plan_windows(series: list[Series], horizon: int, windows: int, min_history: int) -> list[Windows]:
    out = []
    for s in series:
        lengths = window_lengths(len(s), horizon, windows, min_history)
        if not lengths:
            log.warning("series_skipped", series_id=s.series_id, length=len(s),
                        reason=f"shorter than min_history + horizon ({min_history} + {horizon})")
            continue
        if len(lengths) < windows:
            log.info("fewer_windows", series_id=s.series_id, windows=len(lengths), length=len(s))
        out.append(Windows(s, lengths))
    return out


def forecast_table(plan: list[Windows], means: list[np.ndarray], quantiles: list[np.ndarray]) -> pd.DataFrame:
    """Contract table from per-series arrays ``means[i]`` (K_i, H) and ``quantiles[i]`` (K_i, Q, H)."""
    parts = []
    for w, mean, q in zip(plan, means, quantiles):
        k, h = mean.shape
        origins = [format_timestamp(w.series.timestamp_at(length - 1)) for length in w.lengths]
        part = {"series_id": w.series.series_id, "origin": np.repeat(origins, h),
                "step": np.tile(np.arange(1, h + 1), k), "mean": mean.reshape(-1)}
        part.update({c: q[:, i, :].reshape(-1) for i, c in enumerate(QUANTILE_COLUMNS)})
        parts.append(pd.DataFrame(part))
    if not parts:
        return pd.DataFrame(columns=list(CONTRACT_COLUMNS))
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------- StreamFlame

class StreamFlameAdapter:
    """Runs a :class:`streamflame.Forecaster` the way the live service does: one stream per series.

    ``state = f.init_state(scale, step_seconds)``; at every window origin ``state = f.update(state, new values)``
    (only the values since the previous origin) and ``f.forecast(state, H, QUANTILES, num_samples,
    seed)``. The sampling seed of a window is ``forecast_seed(seed, series_id, L)`` with ``L`` the
    number of values fed so far.
    """

    name = MODEL_NAME

    def __init__(self, forecaster, num_samples: int = 100, seed: int = 0, scale: float = 1.0):
        self.f = forecaster
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.scale = float(scale)

    @property
    def min_history(self) -> int:
        return int(self.f.config.patch_len)

    def check_horizon(self, horizon: int) -> None:
        if horizon > self.f.config.max_horizon:
            raise ValueError(f"horizon {horizon} exceeds the model's max_horizon {self.f.config.max_horizon}")

    def forecast_series(self, series: Series, lengths: list[int], horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean (K, H) and quantiles (K, Q, H) at the origins ``lengths`` (ascending)."""
        from ..messages import forecast_seed  # lazy: pydantic message models, only with a model to run

        state = self.f.init_state(self.scale, step_seconds=series.step_seconds)
        fed = 0
        means, quants = [], []
        for length in lengths:
            state = self.f.update(state, series.values[fed:length])
            fed = length
            fc = self.f.forecast(state, horizon, quantiles=QUANTILES, num_samples=self.num_samples,
                                 seed=forecast_seed(self.seed, series.series_id, length))
            means.append(np.asarray(fc.mean, dtype=np.float64))
            quants.append(np.asarray(fc.quantiles, dtype=np.float64))
        return np.stack(means), np.stack(quants)


def load_model(spec: str, seed: int = 0):
    """``default`` = shipped checkpoint, ``random`` = untrained default config, else a checkpoint path."""
    from .. import Forecaster  # lazy: torch (scoring and baselines run without it)

    if spec == "default":
        return Forecaster.load()
    if spec == "random":
        return Forecaster.from_config(seed=seed)
    return Forecaster.load(spec)


def run_model(adapter: StreamFlameAdapter, plan: list[Windows], horizon: int) -> pd.DataFrame:
    adapter.check_horizon(horizon)
    means, quants = [], []
    t0 = time.perf_counter()
    for i, w in enumerate(plan):
        m, q = adapter.forecast_series(w.series, w.lengths, horizon)
        means.append(m)
        quants.append(q)
        if (i + 1) % 10 == 0 or i + 1 == len(plan):
            log.info("model_progress", model=adapter.name, series=i + 1, of=len(plan),
                     seconds=round(time.perf_counter() - t0, 1))
    return forecast_table(plan, means, quants)


# ----------------------------------------------------------------------------- baselines

def _predict_chunk(name: str, contexts: list[np.ndarray], horizon: int, seasons: list[int]):
    model = BASELINES[name]()
    mean, q = model.predict(contexts, horizon, seasons)
    return mean, q, getattr(model, "fallbacks", 0)


def run_baseline(name: str, plan: list[Windows], horizon: int, jobs: int = 1) -> pd.DataFrame:
    """Forecasts of baseline ``name`` at every window; AutoETS fits run in ``jobs`` processes."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    contexts, seasons, owner = [], [], []
    for i, w in enumerate(plan):
        m = seasonality(w.series.freq)
        for length in w.lengths:
            contexts.append(w.series.values[max(0, length - BASELINE_CONTEXT):length])
            seasons.append(m)
            owner.append(i)
    t0 = time.perf_counter()
    if name == "autoets" and jobs > 1 and len(contexts) > 1:
        chunks = [list(range(j, len(contexts), jobs * 4)) for j in range(jobs * 4)]
        chunks = [c for c in chunks if c]
        mean = np.empty((len(contexts), horizon))
        quant = np.empty((len(contexts), len(QUANTILES), horizon))
        fallbacks = 0
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [(c, pool.submit(_predict_chunk, name, [contexts[k] for k in c], horizon,
                                       [seasons[k] for k in c])) for c in chunks]
            for c, fut in futures:
                m_, q_, fb = fut.result()
                mean[c], quant[c] = m_, q_
                fallbacks += fb
    else:
        mean, quant, fallbacks = _predict_chunk(name, contexts, horizon, seasons)
    log.info("baseline_done", model=name, forecasts=len(contexts), fallbacks=fallbacks,
             seconds=round(time.perf_counter() - t0, 1))
    owner = np.asarray(owner)
    means = [mean[owner == i] for i in range(len(plan))]
    quants = [quant[owner == i] for i in range(len(plan))]
    return forecast_table(plan, means, quants)


# ----------------------------------------------------------------------------- output

_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,9}$")


def sibling_path(output: Path, model: str) -> Path:
    """``FORECASTS.csv`` -> ``FORECASTS.<model>.csv``, ``X.metrics.csv`` -> ``X.<model>.metrics.csv``
    (same folder). Only the trailing extension-like suffixes (a letter, then letters or digits)
    go after ``<model>``: a dot inside the name (``temp0.9_h48.csv``, ``fc-v1.2.csv``) stays in it."""
    name, suffix = output.name, ""
    while (m := _EXTENSION.search(name)) and m.start() > 0:
        suffix, name = m.group() + suffix, name[:m.start()]
    return output.with_name(f"{name}.{model}{suffix or '.csv'}")


def write_forecasts(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, float_format="%.10g", columns=list(CONTRACT_COLUMNS))


def write_metrics(scores: Scores, path: Path, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        doc = {"config": config,
               "summary": json.loads(scores.summary.to_json(orient="records")),
               "per_series": json.loads(scores.per_series.to_json(orient="records"))}
        path.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        scores.summary.to_csv(path, index=False, float_format="%.6g")
        scores.per_series.to_csv(sibling_path(path, "per_series"), index=False, float_format="%.6g")


def _load(data: str, freq: str | None, tz: str | None) -> list[Series]:
    series = load_table(data, freq=freq, tz=tz)
    log.info("data_loaded", path=data, series=len(series), points=sum(len(s) for s in series),
             freqs=sorted({s.freq.freqstr for s in series}))
    return series


def _parser_run() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamflame eval", description=__doc__.split("\n\n")[0],
                                epilog="Score existing files instead: streamflame eval score FORECASTS.csv [...] DATA")
    p.add_argument("data", help="CSV/Parquet: long (series_id,timestamp,value) or wide table")
    p.add_argument("--horizon", "-H", type=int, required=True, help="forecast horizon in grid steps")
    p.add_argument("--windows", "-W", type=int, required=True, help="rolling windows per series, counted back from the end")
    p.add_argument("--output", "-o", required=True, help="StreamFlame forecasts (contract CSV); baselines go to OUTPUT.<name>.csv")
    p.add_argument("--model", default="default",
                   help="checkpoint dir, 'default' (shipped checkpoint), 'random' (untrained) or 'none' (baselines only)")
    p.add_argument("--baselines", default="seasonal_naive",
                   help="comma-separated: seasonal_naive,autoets,fracast (or 'none')")
    p.add_argument("--metrics", help="write the score table here (.csv: summary + .per_series.csv; .json: both)")
    p.add_argument("--freq", help="grid step for every series (pandas alias, e.g. 10min); inferred per series if absent")
    p.add_argument("--tz", help="time zone of naive timestamps / to convert aware ones to")
    p.add_argument("--num-samples", type=int, default=100, help="sample paths per StreamFlame forecast")
    p.add_argument("--seed", type=int, default=0, help="global sampling seed")
    p.add_argument("--min-history", type=int, default=96,
                   help="windows with fewer history points are dropped for every model (default 96)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for AutoETS fits")
    p.add_argument("--device", help="torch device for StreamFlame (default: cpu)")
    p.add_argument("--matmul", default="float32", choices=("float32", "bf16", "tf32"),
                   help="StreamFlame's sampling arithmetic (Forecaster.set_arithmetic; docs/model.md): float32 = exact")
    p.add_argument("--temperature", type=float,
                   help="scale of the flow's base noise (Forecaster.set_temperature); default: the checkpoint's")
    p.add_argument("--antithetic", choices=("on", "off"),
                   help="antithetic paths (Forecaster.set_antithetic); default: the checkpoint's")
    p.add_argument("--floors", choices=("on", "off"),
                   help="hold the floor and ceiling each series' window shows (Forecaster.set_floors); "
                        "default: the checkpoint's")
    p.add_argument("--scale", type=float, default=1.0,
                   help="sampling-rate scale of every series' state (Forecaster.init_state: multiplies the SSD "
                        "layers' dt, FlowState's Delta scaling); default 1, as training uses")
    return p


def _parser_score() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamflame eval score",
                                description="Score forecast files in the eval contract format against DATA "
                                            "(ratios to a seasonal naive computed at the same origins).")
    p.add_argument("files", nargs="+", metavar="FILE", help="forecast CSV files, then the DATA file last")
    p.add_argument("--metrics", help="write the score table here (.csv or .json)")
    p.add_argument("--freq")
    p.add_argument("--tz")
    return p


def model_name_from_path(path: Path) -> str:
    """``F.csv`` -> ``F``; ``F.autoets.csv`` -> ``autoets`` (the sibling naming of a run)."""
    parts = path.name.split(".")
    return parts[-2] if len(parts) >= 3 else parts[0]


def model_names(files: list[str]) -> list[str]:
    """One name per forecast file: its model_name_from_path, or where two files share that, each
    file's name without its extension (then with its folder), so the table tells them apart."""
    short = [model_name_from_path(Path(f)) for f in files]
    names = [Path(f).name.rsplit(".", 1)[0] if short.count(n) > 1 else n for f, n in zip(files, short)]
    names = [str(Path(f).parent / n) if names.count(n) > 1 else n for f, n in zip(files, names)]
    out: list[str] = []
    for n in names:
        while n in out:
            n += "_"
        out.append(n)
    return out


def main_score(argv: list[str]) -> int:
    args = _parser_score().parse_args(argv)
    if len(args.files) < 2:
        print("streamflame eval score: give at least one forecast file and the DATA file", file=sys.stderr)
        return 2
    *files, data = args.files
    series = _load(data, args.freq, args.tz)
    tables = {}
    for f, name in zip(files, model_names(files)):
        try:
            tables[name] = pd.read_csv(f, dtype={"series_id": str, "origin": str})
        except (OSError, ValueError) as exc:
            raise ForecastFileError(f"{f}: cannot read ({exc})") from exc
    scores = score(series, tables)
    print(format_summary(scores.summary))
    if args.metrics:
        write_metrics(scores, Path(args.metrics), {"data": data, "files": files})
    return 0


def main_run(argv: list[str]) -> int:
    args = _parser_run().parse_args(argv)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    for b in baselines:
        if b not in BASELINES:
            print(f"streamflame eval: unknown baseline {b!r}; choose from {', '.join(BASELINES)}", file=sys.stderr)
            return 2
    if args.horizon < 1 or args.windows < 1:
        print("streamflame eval: --horizon and --windows must be >= 1", file=sys.stderr)
        return 2
    adapter = None
    min_history = args.min_history
    if args.model != "none":
        retain_freed_memory()          # as the worker: each sampling pass does not fault its buffers in again
        forecaster = load_model(args.model, args.seed)
        if args.device:
            forecaster = forecaster.to(device=args.device)
        forecaster.set_arithmetic(args.matmul)
        if args.temperature is not None:
            forecaster.set_temperature(args.temperature)
        if args.antithetic is not None:
            forecaster.set_antithetic(args.antithetic == "on")
        if args.floors is not None:
            forecaster.set_floors(args.floors == "on")
        if not (math.isfinite(args.scale) and args.scale > 0):
            raise SystemExit(f"streamflame eval: --scale must be a finite number > 0, got {args.scale}")
        adapter = StreamFlameAdapter(forecaster, args.num_samples, args.seed, args.scale)
        adapter.check_horizon(args.horizon)
        min_history = max(min_history, adapter.min_history)
    series = _load(args.data, args.freq, args.tz)
    plan = plan_windows(series, args.horizon, args.windows, min_history)
    if not plan:
        print(f"streamflame eval: no series has {min_history} + {args.horizon} points", file=sys.stderr)
        return 1
    output = Path(args.output)
    tables: dict[str, pd.DataFrame] = {}
    if adapter is not None:
        tables[MODEL_NAME] = run_model(adapter, plan, args.horizon)
        write_forecasts(tables[MODEL_NAME], output)
        log.info("forecasts_written", model=MODEL_NAME, path=str(output), rows=len(tables[MODEL_NAME]))
    for b in baselines:
        tables[b] = run_baseline(b, plan, args.horizon, args.jobs)
        path = sibling_path(output, b)
        write_forecasts(tables[b], path)
        log.info("forecasts_written", model=b, path=str(path), rows=len(tables[b]))
    if not tables:
        print("streamflame eval: nothing to run (--model none and --baselines none)", file=sys.stderr)
        return 2
    scores = score([w.series for w in plan], tables)
    print(format_summary(scores.summary))
    if args.metrics:
        config = {k: v for k, v in vars(args).items()}
        write_metrics(scores, Path(args.metrics), config)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()      # the one set-up: JSON lines on stderr (stdout is reserved for the table)
    try:
        if argv and argv[0] == "score":
            return main_score(argv[1:])
        return main_run(argv)
    except (DataError, ForecastFileError, FileNotFoundError) as exc:
        print(f"streamflame eval: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
