#!/usr/bin/env bash
# Choose a checkpoint's sampling settings on the calibration set (training sources, `streamflame data
# export-calibration runs/calib_train.csv`): every (temperature, antithetic) pair at H = 48 and 192, W = 10,
# then the choice: cov80 (mean of the two horizons) nearest 0.80, within 0.005 of the best the lower mean
# WQL ratio (docs/model.md rows 13-14). Usage: [FLOORS=on] scripts/calibrate_sampling.sh CHECKPOINT_DIR TAG
set -e
M=${1:?checkpoint dir}; TAG=${2:?tag for runs/eval/TAG_*}; FLOORS=${FLOORS:-off}   # FLOORS=on: sampling.floors
mkdir -p runs/eval
for t in 0.8 0.85 0.9 0.95 1.0; do for a in off on; do for H in 48 192; do
  o=runs/eval/${TAG}_h${H}_t${t}_a${a}
  [ -f $o.csv ] || .venv/bin/streamflame eval runs/calib_train.csv --horizon $H --windows 10 --baselines none \
     --model $M --temperature $t --antithetic $a --floors $FLOORS --output $o.fc.csv --metrics $o.csv > $o.log 2>&1
done; done; done
.venv/bin/python - "$TAG" <<'PY'
import sys, pandas as pd
tag = sys.argv[1]; rows = []
for t in ("0.8", "0.85", "0.9", "0.95", "1.0"):
    for a in ("off", "on"):
        m = [pd.read_csv(f"runs/eval/{tag}_h{H}_t{t}_a{a}.csv").set_index("model").loc["streamflame"] for H in (48, 192)]
        rows.append(dict(tau=t, anti=a, wql48=m[0].wql_ratio, wql192=m[1].wql_ratio, cov48=m[0].coverage_80,
                         cov192=m[1].coverage_80, jump48=m[0].jump_ratio, jump192=m[1].jump_ratio))
d = pd.DataFrame(rows)
d["wql"] = (d.wql48 + d.wql192) / 2; d["dcov"] = ((d.cov48 + d.cov192) / 2 - 0.80).abs()
print(d.round(4).to_string(index=False))
ok = d[d.dcov <= d.dcov.min() + 0.005]
print("choice:", ok.sort_values("wql").iloc[0][["tau", "anti", "wql48", "wql192", "cov48", "cov192"]].to_dict())
PY
