"""A near-periodic check set, apart from the training generator: 18 series of a two-harmonic day
(hourly and 10-minute) under slow drift and amplitude modulation, with noise of 0.5, 2 and 5 % of
the day's amplitude, 4,000 steps each; the value one day earlier is close to the best forecast.

    python scripts/periodic_check.py runs/synth/periodic.csv
    streamflame eval runs/synth/periodic.csv --horizon 48 --windows 10 --baselines seasonal_naive \
        --model M --output runs/synth/X.fc.csv --metrics runs/synth/X.csv

The shipped stage 10 scored 1.31 (WQL ratio to seasonal naive) on it, 1.7-2.0 at 0.5 % noise
(docs/model.md, row 21). Seeded: the same file every run."""
import sys

import numpy as np
import pandas as pd


def main(path: str) -> None:
    rng = np.random.default_rng(7)
    rows = []
    for freq, per in (("1h", 24), ("10min", 144)):
        for noise in (0.005, 0.02, 0.05):
            for k in range(3):
                n = 4000
                t = np.arange(n)
                shape = np.sin(2 * np.pi * t / per) + 0.3 * np.sin(4 * np.pi * t / per + rng.uniform(0, 6))
                level = np.cumsum(rng.normal(0, 0.002, n))                 # slow drift
                amp = 1 + 0.1 * np.sin(2 * np.pi * t / (per * 40))
                y = 50 + 8 * (amp * shape + level) + 8 * noise * rng.normal(size=n)
                ts = pd.date_range("2020-01-01", periods=n, freq=freq)
                rows.append(pd.DataFrame({"series_id": f"per/{freq}/n{noise}/{k}", "timestamp": ts,
                                          "value": y.round(3)}))
    pd.concat(rows).to_csv(path, index=False)


if __name__ == "__main__":
    main(sys.argv[1])
