"""Per-source table of docs/model.md: geometric mean of the per-series WQL ratio by source.

    python scripts/source_table.py NAME [NAME ...]

reads runs/eval/shipped_hH.per_series.metrics.csv (the shipped-at-the-time model and fracast) and
runs/eval/NAME_hH.per_series.metrics.csv for H = 48 and 192 (what `streamflame eval ... --output
runs/eval/NAME_hH.csv --metrics runs/eval/NAME_hH.metrics.csv` writes) and prints a markdown table.
DIBS stations are grouped by variable."""
import sys, numpy as np, pandas as pd, warnings
warnings.simplefilter("ignore")
cands = sys.argv[1:]
def load(path, model):
    d = pd.read_csv(path); d = d[d.model == model].copy()
    d['r'] = d.ql_sum / d.ql_sum_ref
    src = d.series_id.str.split('/').str[:2].str.join('/')
    d['src'] = np.where(d.series_id.str.startswith('dibs'), 'dibs/' + d.series_id.str.split('/').str[-1], src)
    return d.set_index('series_id')
rows = {}
for H in (48, 192):
    cols = {'shipped': load(f'runs/eval/shipped_h{H}.per_series.metrics.csv', 'streamflame'),
            'fracast': load(f'runs/eval/shipped_h{H}.per_series.metrics.csv', 'fracast')}
    for c in cands:
        cols[c] = load(f'runs/eval/{c}_h{H}.per_series.metrics.csv', 'streamflame')
    for name, d in cols.items():
        g = d.groupby('src').r.apply(lambda x: np.exp(np.log(x).mean()))
        for src, v in g.items():
            rows.setdefault(src, {})[f'{name} {H}'] = v
        rows.setdefault('ALL (geo mean)', {})[f'{name} {H}'] = np.exp(np.log(d.r).mean())
t = pd.DataFrame(rows).T
n = load('runs/eval/shipped_h48.per_series.metrics.csv', 'streamflame').groupby('src').size()
t.insert(0, 'series', n)
cols = list(t.columns)
print("| source | " + " | ".join(cols) + " |")
print("|---|" + "---|" * len(cols))
for idx, r in t.iterrows():
    print(f"| {idx} | " + " | ".join("" if pd.isna(v) else (f"{int(v)}" if c == "series" else f"{v:.2f}") for c, v in r.items()) + " |")
