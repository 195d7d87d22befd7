"""Ship a training run's final weights as streamflame/checkpoints/default, with its whole lineage.

    python scripts/ship_checkpoint.py RUN/final --temperature T --antithetic on|off --floors on|off \
        --root-model-id ID --text "what, and its validation" [--out DIR]

A run started with --init-from another run's final; this walks that chain back to the shipped
checkpoint it started from (a train_config.init_from of streamflame/checkpoints/default, or of the run
whose final weights are the shipped ones) and records
every run's segments (device, steps, observations, wall time) in config.json, adds a lineage stage
with --text, sums trained_steps, and writes the sampling settings chosen on the calibration set.
--out writes the candidate elsewhere (e.g. to look at its demo fan chart before shipping it).
The shipped checkpoint's model_id must be the chain's root (the weights it started from): shipping
over anything else would break the lineage, so the script refuses.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SHIPPED = Path("streamflame/checkpoints/default")


def chain(final: Path, shipped_id: str) -> list[tuple[Path, dict]]:
    """[(run final dir, its config.json)] from the first run after the shipped checkpoint to ``final``.
    The chain ends at an init_from that is the shipped checkpoint: its directory, or the run whose
    final weights were shipped (its model_id is ``shipped_id``; that run's segments are in the
    shipped lineage already)."""
    out, seen = [], set()
    cfg = json.loads((final / "config.json").read_text())
    while True:
        out.append((final, cfg))
        parent = cfg.get("train_config", {}).get("init_from")
        if not parent:
            raise SystemExit(f"{final}: trained from scratch, not from the shipped checkpoint")
        parent = Path(parent)
        if parent.resolve() == SHIPPED.resolve():
            return out[::-1]
        if parent in seen or not (parent / "config.json").exists():
            raise SystemExit(f"{final}: its init_from {parent} is neither a run's final nor {SHIPPED}")
        cfg = json.loads((parent / "config.json").read_text())      # each run's config read once
        if cfg["model_id"] == shipped_id:
            return out[::-1]
        seen.add(parent)
        final = parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("final", type=Path)
    ap.add_argument("--temperature", type=float, required=True)
    ap.add_argument("--antithetic", choices=("on", "off"), required=True)
    ap.add_argument("--floors", choices=("on", "off"), required=True, help="sampling.floors (Forecaster.set_floors)")
    ap.add_argument("--out", type=Path, default=SHIPPED, help=f"where to write it (default {SHIPPED})")
    ap.add_argument("--text", required=True, help="the lineage stage's text: commands, data, validation figures")
    ap.add_argument("--root-model-id", required=True,
                    help="model_id of the checkpoint the chain started from (the shipped one, checked)")
    args = ap.parse_args()
    old = json.loads((SHIPPED / "config.json").read_text())
    if old["model_id"] != args.root_model_id:
        raise SystemExit(f"{SHIPPED} is {old['model_id']}, not {args.root_model_id}: the chain did not start from it")
    runs = chain(args.final, old["model_id"])
    last = runs[-1][1]
    segments = [{**s, "run": str(p.parent)} for p, cfg in runs for s in cfg["lineage"]]
    stage = f"stage{len(old['lineage'])}"          # date + stage1..N: the next stage's number
    while stage in old["lineage"]:
        stage = f"stage{int(stage[5:]) + 1}"
    from streamflame.model import Forecaster
    f = Forecaster.load(args.final).set_temperature(args.temperature)
    f.set_antithetic(args.antithetic == "on").set_floors(args.floors == "on")
    assert f.model_id == last["model_id"], f"{args.final}: weights are {f.model_id}, its config says {last['model_id']}"
    extra = {"lineage": {**old["lineage"], stage: args.text},
             "observations_seen_last_stage": sum(s["observations"] for s in segments), "segments": segments,
             "train_config": last["train_config"],
             "trained_steps": old["trained_steps"] + sum(cfg["trained_steps"] for _, cfg in runs)}
    f.save(args.out, extra)                     # weights, model, model_id and sampling as Forecaster writes them
    g = Forecaster.load(args.out)
    assert (g.model_id, g.temperature, g.antithetic, g.floors) == (f.model_id, f.temperature, f.antithetic, f.floors)
    print(f"wrote {f.model_id} to {args.out} as {stage}: {len(segments)} segments, "
          f"{extra['observations_seen_last_stage']:,} observations, trained_steps {extra['trained_steps']}")


if __name__ == "__main__":
    main()
