"""Documented search, report and export features on one tiny study file searched a few times
(in this process, through the CLI's main()): `--study-name`, `--seed`, the `nsga2` sampler,
`--timeout`, `report --html`, `export --trial N`, and exit code 1 on an internal error."""

from __future__ import annotations

import json
import re
import time

import optuna
import pytest
from conftest import run_in_process
from optuna.trial import TrialState

TRIALS = 3
BUDGET = 0.5  # speedup: met by every plan of the tiny space, so the front is never empty


@pytest.fixture(scope="module")
def study_file(tmp_path_factory, study_writer):
    folder = tmp_path_factory.mktemp("features")
    return study_writer(folder, budget={"speedup": BUDGET},
                        search={"sampler": "nsga2", "trials": TRIALS, "seed_uniform": False})


@pytest.fixture(scope="module")
def searched(study_file):
    """Studies a and b with --seed 5, c with --seed 6, all from the same file."""
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        res = run_in_process("search", study_file, "--study-name", name, "--seed", seed)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"study {name}: {TRIALS}/{TRIALS} trials finished" in res.stdout
    return study_file


def _trials(path, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{path.parent / (name + '.db')}")
    return study.get_trials()


def test_study_name_names_the_study_and_its_storage(searched):
    folder = searched.parent
    assert not (folder / "study.db").exists()  # the file's own name is not used
    for name in "abc":
        summaries = optuna.study.get_all_study_summaries(f"sqlite:///{folder / (name + '.db')}")
        assert [s.study_name for s in summaries] == [name]
    rep = run_in_process("report", searched, "--study-name", "b", "--json", "--no-rescore")
    assert rep.returncode == 0, rep.stderr[-2000:]
    data = json.loads(rep.stdout)
    assert data["study"] == "b" and data["n_complete"] == TRIALS


def test_seed_repeats_the_search_and_another_seed_does_not(searched):
    params = {name: [t.params for t in _trials(searched, name)] for name in "abc"}
    assert len(params["a"]) == TRIALS
    assert params["a"] == params["b"]  # same seed, same plans in the same order
    assert params["a"] != params["c"]


def test_nsga2_sampler_draws_every_trial(searched):
    """NSGA-II records the generation of each trial it samples (Optuna's `NSGAIISampler:generation`)."""
    for name in "abc":
        trials = _trials(searched, name)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * TRIALS
        assert all(t.system_attrs.get("NSGAIISampler:generation") == 0 for t in trials)
        assert not any(t.user_attrs.get("seeded") for t in trials)  # search.seed_uniform: false


def test_timeout_stops_starting_trials(study_file):
    t0 = time.monotonic()
    res = run_in_process("search", study_file, "--study-name", "t", "--trials", 1000, "--timeout", 1)
    assert res.returncode == 0, res.stderr[-3000:]
    done = [t for t in _trials(study_file, "t") if t.state == TrialState.COMPLETE]
    assert 1 <= len(done) < 1000
    assert f"study t: {len(done)}/1000 trials finished" in res.stdout
    assert time.monotonic() - t0 < 120


def _plotly_traces(html: str) -> list[dict]:
    """The traces of the figure in a page written by plotly's write_html."""
    start = html.index("Plotly.newPlot(")
    start = html.index("[", html.index(",", start))
    traces, _ = json.JSONDecoder().raw_decode(html[start:])
    return traces


def test_report_html_shows_the_front(searched, tmp_path):
    page = tmp_path / "out" / "report.html"
    res = run_in_process("report", searched, "--study-name", "a", "--html", page, "--json", "--no-rescore")
    assert res.returncode == 0, res.stderr[-2000:]
    front = json.loads(res.stdout)["pareto"]
    assert front
    traces = {t["name"]: t for t in _plotly_traces(page.read_text())}
    line = traces["Pareto front"]
    assert line["text"] == [f"trial {r['number']}" for r in front]
    assert line["x"] == pytest.approx([r["latency_ms"] for r in front])
    assert line["y"] == pytest.approx([r["quality"] for r in front])
    shown = re.findall(r"trial (\d+)<br>", json.dumps(traces["within budget"]["text"]))
    assert {r["number"] for r in front} <= {int(n) for n in shown}
    assert page.with_suffix(".png").stat().st_size > 1000


def test_export_trial_n(searched, tmp_path):
    from slimformer.methods import Plan, load_compressed, model_size
    from slimformer.methods.export import META

    trials = _trials(searched, "a")
    target = min(trials, key=lambda t: t.user_attrs["size_mb"])
    out = tmp_path / "export"
    res = run_in_process("export", searched, "--study-name", "a", "--trial", target.number, "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"exported trial {target.number} to {out}" in res.stdout
    model, tokenizer, plan = load_compressed(out)
    chosen = Plan.from_dict(target.user_attrs["plan"])
    assert (plan.layers, plan.heads, plan.ffn) == (chosen.layers, chosen.heads, chosen.ffn)
    assert model_size(model)["params"] == target.user_attrs["params"]
    assert tokenizer is not None
    metrics = json.loads((out / META).read_text())["metrics"]
    assert metrics["trial"] == target.number and metrics["study"] == "a"
    assert metrics["quality"] == target.user_attrs["quality"]


def test_internal_error_is_exit_1_with_one_line(searched, monkeypatch):
    import slimformer.searcher.report.collect as report

    def broken(*args, **kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(report, "report_study", broken)
    monkeypatch.delenv("SLIMFORMER_DEBUG", raising=False)
    res = run_in_process("report", searched, "--study-name", "a")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == ["slimformer report: internal error: RuntimeError: planted bug "
                     "(set SLIMFORMER_DEBUG=1 for the traceback)"]
    monkeypatch.setenv("SLIMFORMER_DEBUG", "1")
    res = run_in_process("report", searched, "--study-name", "a")
    assert res.returncode == 1 and "Traceback" in res.stderr and "planted bug" in res.stderr
