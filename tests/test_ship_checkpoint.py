"""scripts/ship_checkpoint.py: a run trained from the shipped checkpoint is written with its lineage and
every sampling setting asked for (floors included: the script once dropped them), and a run that did
not start from the shipped checkpoint is refused."""
import importlib.util
import json
from pathlib import Path

import pytest

from streamflame.model import Forecaster

REPO = Path(__file__).resolve().parent.parent
SHIPPED = "streamflame/checkpoints/default"


def _script():
    spec = importlib.util.spec_from_file_location("ship_checkpoint", REPO / "scripts" / "ship_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path: Path, init_from: str, name: str = "run", steps: int = 7) -> Path:
    """A run's final directory: the shipped weights with one CPU segment, trained 'from' init_from."""
    f = Forecaster.load(REPO / SHIPPED)
    segment = {"device": "cpu", "start_step": 0, "end_step": steps, "observations": 1234, "wall_s": 1.0}
    return f.save(tmp_path / name / "final", {"lineage": [segment], "trained_steps": steps,
                                              "train_config": {"init_from": init_from, "seed": 3}})


def test_a_candidate_keeps_its_sampling_settings_and_lineage(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)                         # the script names the shipped checkpoint by its repo path
    old = json.loads((REPO / SHIPPED / "config.json").read_text())
    final, out = _run(tmp_path, SHIPPED), tmp_path / "cand"
    monkeypatch.setattr("sys.argv", ["ship_checkpoint.py", str(final), "--temperature", "0.8", "--antithetic", "on",
                                     "--floors", "on", "--root-model-id", old["model_id"], "--text", "a test stage",
                                     "--out", str(out)])
    _script().main()
    f = Forecaster.load(out)
    assert (f.temperature, f.antithetic, f.floors) == (0.8, True, True)
    meta = json.loads((out / "config.json").read_text())
    assert meta["sampling"] == {"temperature": 0.8, "antithetic": True, "floors": True}
    new_stages = set(meta["lineage"]) - set(old["lineage"])
    assert len(new_stages) == 1 and meta["lineage"][new_stages.pop()] == "a test stage"
    assert meta["segments"] == [{"device": "cpu", "start_step": 0, "end_step": 7, "observations": 1234,
                                 "wall_s": 1.0, "run": str(final.parent)}]
    assert meta["observations_seen_last_stage"] == 1234
    assert meta["trained_steps"] == old["trained_steps"] + 7
    assert meta["train_config"] == {"init_from": SHIPPED, "seed": 3}
    assert json.loads((REPO / SHIPPED / "config.json").read_text()) == old          # --out: nothing shipped


def test_a_run_not_started_from_the_shipped_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    old = json.loads((REPO / SHIPPED / "config.json").read_text())
    final = _run(tmp_path, str(tmp_path / "elsewhere"))
    monkeypatch.setattr("sys.argv", ["ship_checkpoint.py", str(final), "--temperature", "0.9", "--antithetic", "off",
                                     "--floors", "off", "--root-model-id", old["model_id"], "--text", "x",
                                     "--out", str(tmp_path / "cand")])
    with pytest.raises(SystemExit, match="neither a run's final"):
        _script().main()
    assert not (tmp_path / "cand").exists()


def test_the_chain_ends_at_the_run_whose_weights_were_shipped(tmp_path, monkeypatch):
    """A run trained on from the run that became the shipped checkpoint: only the new run's segments
    and steps are added (the shipped run's are in the shipped lineage already)."""
    monkeypatch.chdir(REPO)
    old = json.loads((REPO / SHIPPED / "config.json").read_text())
    shipped_run = _run(tmp_path, "runs/some_earlier/final", name="shipped_run", steps=5)   # has the shipped model_id
    final, out = _run(tmp_path, str(shipped_run), name="next", steps=9), tmp_path / "cand"
    monkeypatch.setattr("sys.argv", ["ship_checkpoint.py", str(final), "--temperature", "0.85", "--antithetic", "on",
                                     "--floors", "on", "--root-model-id", old["model_id"], "--text", "next stage",
                                     "--out", str(out)])
    _script().main()
    meta = json.loads((out / "config.json").read_text())
    assert [s["run"] for s in meta["segments"]] == [str(final.parent)]
    assert meta["trained_steps"] == old["trained_steps"] + 9
