"""Weight interpolation between a fine-tuning run's start and its end (WiSE-FT: Wortsman et al.,
"Robust fine-tuning of zero-shot models", 2022): theta(alpha) = alpha * theta_end + (1 - alpha) *
theta_start. Fine-tuning from a broadly trained checkpoint on a new mix tends to trade some of
what the start knew for what the mix teaches; a point between them can keep both.

    python -m streamflame.train.soup RUN_DIR --alpha 0.5 --out DIR

The start is rebuilt from the run's own training config: its ``init_from`` checkpoint loaded into
the run's model (``load_compatible``: levers the start lacks get their zero initialisation, as
the run began), so alpha = 0 is the start's function and alpha = 1 the run's ``final``. The
result is a checkpoint directory with the end's sampling temperature and lineage, plus
``interpolation`` (what was mixed, and how).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from streamflame.model import Forecaster
from streamflame.model.config import ModelConfig
from streamflame.model.flame import Flame, load_compatible
from streamflame.model.forecaster import _model_id

__all__ = ["interpolate"]


def interpolate(run_dir: str | Path, alpha: float) -> tuple[Forecaster, dict]:
    """(the interpolated Forecaster, its config.json extras) for RUN_DIR's start and final."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "final" / "config.json").read_text())
    init_from = meta.get("train_config", {}).get("init_from")
    if not init_from:
        raise ValueError(f"{run_dir} did not start from a checkpoint (train_config.init_from): nothing to mix with")
    end, init = Forecaster.load(run_dir / "final"), Forecaster.load(init_from)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(meta["train_config"].get("seed", 0)))     # the run's own start (train/loop.py)
        start = Flame(ModelConfig.from_dict(meta["model"]))
    load_compatible(start, init.model, f"init_from {init_from}")
    a, b = start.state_dict(), end.model.state_dict()
    if set(a) != set(b):
        raise ValueError(f"{run_dir}: start and end have different weights ({sorted(set(a) ^ set(b))})")
    mixed = Flame(end.config)
    mixed.load_state_dict({k: (alpha * b[k] + (1.0 - alpha) * a[k]).to(b[k].dtype) if b[k].is_floating_point()
                           else b[k] for k in b})
    mixed.eval()
    f = Forecaster(mixed, _model_id(mixed), end.temperature, end.antithetic, end.floors)
    extra = {k: v for k, v in meta.items() if k not in ("model", "model_id", "sampling")}
    extra["interpolation"] = {"method": "WiSE-FT: alpha * end + (1 - alpha) * start", "alpha": alpha,
                              "start": f"{init_from} ({init.model_id}, new levers at zero)",
                              "end": f"{run_dir / 'final'} ({end.model_id})"}
    return f, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamflame.train.soup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a training run directory (with final/ and its train_config.init_from)")
    ap.add_argument("--alpha", type=float, required=True, help="weight of the run's end, in [0, 1]")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    args = ap.parse_args(argv)
    try:
        f, extra = interpolate(args.run_dir, args.alpha)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    f.save(args.out, extra=extra)
    print(json.dumps({"out": args.out, "model_id": f.model_id, "alpha": args.alpha}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
