"""One home per fact (issue 29), counted on a tiny study: the study's runtime set is decided once
(devices/registry.check_runtime, held by Workbench.runtimes), and a trial resolves its plan, looks up
the model's adapter and reads each method's spec a fixed, small number of times (a regression here is
a fact worked out again somewhere)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest


@pytest.fixture
def counts(monkeypatch):
    """Counts of study_runtimes (device.runtime -> runtimes), Plan.resolve, Method.spec_from_plan
    calls, and adapter lookups: all of them (`get_adapter`: the methods' own on the model they are
    changing included) and those made to resolve a plan (`resolving_lookups`: by the workbench and by
    apply_plan) while the test runs."""
    import slimformer.methods.adapters as adapters
    import slimformer.methods.registry as methods_registry
    import slimformer.searcher.problem.workbench as workbench
    from slimformer.methods.plan import Plan
    from slimformer.searcher.devices import registry

    seen = Counter()

    def counted(key, fn):
        def wrapper(*args, **kwargs):
            seen[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(registry, "study_runtimes", counted("study_runtimes", registry.study_runtimes))
    monkeypatch.setattr(Plan, "resolve", counted("resolve", Plan.resolve))
    monkeypatch.setattr(adapters, "adapter_class", counted("get_adapter", adapters.adapter_class))
    for module in (workbench, methods_registry):
        monkeypatch.setattr(module, "get_adapter", counted("resolving_lookups", module.get_adapter))
    monkeypatch.setattr(methods_registry, "METHODS", tuple(
        replace(m, spec_from_plan=counted("spec_from_plan", m.spec_from_plan)) for m in methods_registry.METHODS))
    return seen


def test_a_search_decides_its_runtimes_once_and_resolves_each_plan_once(make_study, counts, one_thread):
    import slimformer.methods.registry as methods_registry
    from slimformer.searcher.backends import local
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.search import prepare

    trials = 3
    cfg = load_study_config(make_study(
        device={"runtime": "auto", "rounds": 3, "max_rounds": 3},
        space={"heads": {"choices": [2, 4]}, "ffn": {"choices": [128, 256]}, "bits": [32, 8], "depth": {"min": 3}},
        search={"trials": trials, "sampler": "random", "isolate": False, "seed_sensitivity": False,
                "prescreen": False}))
    session = prepare(cfg, log=lambda *_: None, progress=False)
    assert counts["study_runtimes"] == 1  # device.runtime -> the runtime set: once, held by the workbench
    assert len(session.bench.runtimes) > 1  # auto: eager and the installed runtimes that compete
    counts.clear()
    local.run(session)
    done = [t for t in session.study.get_trials(deepcopy=False) if t.state.is_finished()]
    assert len(done) == trials
    per_trial = {k: v / trials for k, v in counts.items()}
    print("per trial:", per_trial)
    assert counts["study_runtimes"] == 0
    assert per_trial["resolve"] == 1  # once, handed to build, apply_plan and the runtimes that can run it
    assert per_trial["spec_from_plan"] == len(methods_registry.METHODS)  # each method's spec read once
    assert counts["resolving_lookups"] == 0  # the model's shape is the workbench's, looked up once
