"""search.seed_sensitivity: mixed-precision plans from per-layer Fisher sensitivity are queued
after the uniform seeds (run in process on the tiny study: a subprocess would mostly import)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from slimformer.searcher import load_study_config, run_search
from slimformer.searcher.cli import main
from slimformer.searcher.study.seeds import sensitivity_seeds
from slimformer.spaces import Space


def _study(path):
    return optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}")


def test_seed_sensitivity_enqueues_mixed_bits_after_the_uniform_plans(make_study, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    choices = [32, 8, 4]
    space = {"heads": None, "ffn": None, "depth": None, "bits": {"choices": choices}}  # bits only: few seeds
    path = make_study(space=space, search={"trials": 1, "seed_sensitivity": True})
    lines = []
    run_search(load_study_config(path), log=lines.append, progress=False)
    trials = _study(path).get_trials()
    seeded = [t.user_attrs.get("seeded") for t in trials]
    sens = [t for t in trials if t.user_attrs.get("seeded") == "sensitivity"]
    assert len(sens) == len(choices) - 1  # one per pair of consecutive bit-widths
    assert seeded.index("sensitivity") > max(i for i, s in enumerate(seeded) if s is True)  # after uniform
    assert all(t.state == TrialState.WAITING for t in sens)  # queued; trials: 1 ran only the baseline
    logged = [ln for ln in lines if "seeded plan: bits" in ln]
    assert len(logged) == len(sens) and all(" MB" in ln for ln in logged)

    run_search(load_study_config(path), trials=len(trials), log=lines.append, progress=False)  # run them all
    done = [t for t in _study(path).get_trials() if t.user_attrs.get("seeded") == "sensitivity"]
    assert [t.state for t in done] == [TrialState.COMPLETE] * len(sens)
    for t in done:
        bits = t.user_attrs["plan"]["bits"]
        assert len(set(bits)) > 1 and set(bits) <= set(choices)  # mixed, within the space
    uniform = {t.user_attrs["plan"]["bits"][0]: t.user_attrs["size_mb"] for t in _study(path).get_trials()
               if t.user_attrs.get("seeded") is True}
    assert set(uniform) == {32, 8}  # the uniform seeds: the baseline and all 8 bits
    assert uniform[8] < done[0].user_attrs["size_mb"] < uniform[32]  # between uniform 32 and 8 bits
    assert done[1].user_attrs["size_mb"] < uniform[8]  # between uniform 8 and 4 bits


def test_seed_sensitivity_needs_calibration(make_study, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    path = make_study(data={"calibration": None}, search={"seed_sensitivity": True})
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "search.seed_sensitivity needs data.calibration" in err and "Traceback" not in err
    assert not (tmp_path / "study.db").exists()  # refused before the storage was written


def test_nothing_to_seed_says_why_in_one_line():
    from slimformer.methods.plan import ModelShape

    shape = ModelShape(num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=256, hidden_size=64)
    for data in ({"bits": {"choices": [32, 8], "tie": "shared"}}, {"bits": [8]}, {}):
        lines = []
        assert sensitivity_seeds(Space.from_dict(data, shape), bench=None, log=lines.append) == []
        assert len(lines) == 1 and "nothing to seed" in lines[0]
