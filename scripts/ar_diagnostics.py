"""How coherent a checkpoint's sample paths are across patch boundaries, and why (docs/model.md row 14).

    python scripts/ar_diagnostics.py DATA.csv [--model DIR] [--forecasts F.fc.csv ...]

--model: gamma(c) of an ar_patches checkpoint (how far each step of a future patch follows where the
previous patch ended), recorded by a hook on ``flow.prev`` while it forecasts every third series of
DATA (2,000 points of history, H = 192): quantiles over contexts, and the median by step of the patch.
--forecasts: from saved `streamflame eval` forecasts of DATA, the 80 % band's width at the first step of
a patch over its width at the previous step (geometric mean; a sawtooth shows as well below 1), beside
the same ratio inside patches.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from streamflame.data.loader import load_table
from streamflame.eval.metrics import PATCH_STEPS
from streamflame.eval.scoring import check_contract, origin_lengths
from streamflame.model import Forecaster


def gamma_by_step(model: str, series) -> np.ndarray:
    f = Forecaster.load(model)
    if not f.config.ar_patches:
        raise SystemExit(f"{model}: not an ar_patches checkpoint")
    out: list[torch.Tensor] = []
    hook = f.model.flow.prev.register_forward_hook(lambda m, i, o: out.append(o.detach().reshape(-1, o.shape[-1])))
    try:
        for s in series[::3]:
            v = np.asarray(s.values[:2000], dtype=np.float64)
            if np.sum(~np.isnan(v)) >= 2 * f.config.patch_len:
                f.forecast(f.state_from_history(v), 192, num_samples=10, seed=1)
    finally:
        hook.remove()
    return torch.cat(out).numpy()                                       # (contexts, patch_len)


def band_steps(path: str, by_id) -> tuple[float, float]:
    t = check_contract(pd.read_csv(path, dtype={"series_id": str, "origin": str}), path)
    t = t.assign(L=origin_lengths(t, by_id, path), width=t["q0.9"] - t["q0.1"])
    at, inside = [], []
    for (_, length), w in t.groupby(["series_id", "L"]):
        w = w.sort_values("step")
        width, grid = w["width"].to_numpy(), length - 1 + w["step"].to_numpy()
        ok = (width[1:] > 0) & (width[:-1] > 0)
        r = np.log(np.where(ok, width[1:], 1) / np.where(ok, width[:-1], 1))
        start = grid[1:] % PATCH_STEPS == 0
        at += list(r[ok & start])
        inside += list(r[ok & ~start])
    return float(np.exp(np.mean(at))), float(np.exp(np.mean(inside)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--model")
    ap.add_argument("--forecasts", nargs="*", default=[])
    args = ap.parse_args()
    series = load_table(args.data)
    if args.model:
        g = gamma_by_step(args.model, series)
        print(f"gamma over {g.shape[0]} contexts x {g.shape[1]} steps: 5/25/50/75/95 % "
              f"{np.round(np.quantile(g, [.05, .25, .5, .75, .95]), 3).tolist()}")
        print(f"median by step of the patch (0, 1, 2, 5, 10, 20, last): "
              f"{[round(float(x), 3) for x in np.median(g, 0)[[0, 1, 2, 5, 10, 20, -1]]]}; "
              f"step 0: 5/50/95 % {np.round(np.quantile(g[:, 0], [.05, .5, .95]), 3).tolist()}")
    by_id = {s.series_id: s for s in series}
    for f in args.forecasts:
        at, inside = band_steps(f, by_id)
        print(f"{f}: 80 % band width at a patch's first step / the step before: {at:.3f} (inside patches: {inside:.4f})")


if __name__ == "__main__":
    main()
