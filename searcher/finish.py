"""`slimformer finish`: train the search's best plans properly and store them as final models.

For each of the K best feasible front trials (by search quality): rebuild it from its plan
(Fisher importance and mask tuning on the small calibration set, as in the search), distil it
for `steps` steps from the uncompressed model on the distillation corpus (data.distill, default
the calibration file in full; shuffled every epoch), quantize, score it on the full validation
split and on data.test, save it (searcher/study/finals.py). Then all final models are re-timed
against the uncompressed model in one interleaved measurement.

Resuming: a final model is stored (one atomic `add_trial`) only once trained, scored and saved,
so after Ctrl-C or kill -9 the same command skips the stored ones and trains the others from
the start. `--minutes` caps the whole command: each plan gets an equal share of the time left,
and its distillation runs the steps that fit (timed over its first steps).

A top-level stage like search.py; only cli imports it.

Imports: config, errors, methods, devices, problem, study, report.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from .config import StudyConfig
from .errors import UserError
from .study.budget import Budget
from .study.finals import (
    TIMING_ATTR,
    best_holding_final,
    final_folder,
    final_rows,
    final_table,
    open_finals,
)
from .study.records import FinalRecord, StudyRecord, TrialRecord, study_budget, write_study

__all__ = ["run_finish", "render_finish", "final_plan", "check_corpus", "export_final_model", "export_final", "export_trial", "FINISHING", "DEFAULT_STEPS", "DEFAULT_TOP"]

DEFAULT_TOP = 3
# 1,000 steps of embedding distillation on the STS-B train pairs, lr 2e-4, recovered a 2x MiniLM
# plan from 79.07 to 82.10 held-out Spearman (issue 16's table; benchmarks.finish measures it on
# this project's split: benchmarks/results/finish_results.md).
DEFAULT_STEPS = 1000
# the finishing hyperparameters per task family (not a "recipe": that word names the small models
# trained from data, problem/recipes.py): which distillation losses and which peak learning rate, chosen
# on the validation split (benchmarks/finish_recipe.py: sentence similarity, a 4x-plus MiniLM plan on
# STS-B: lr 5e-4 beat 2e-4 at 300 and at 1,000 steps; hidden or attention losses, dropout, batch 16
# and lr 1e-4 did not)
FINISHING = {
    "sentence-similarity": {"losses": ("embedding",), "lr": 5e-4},
    "text-classification": {"losses": ("logits",), "lr": 1e-4},
    "causal-lm": {"losses": ("logits",), "lr": 1e-4},
}
TIMING_RESERVE_S = 30.0  # kept back under --minutes for the final interleaved timing


def _candidates(study, bench, top: int, log) -> list:
    """The `top` feasible trials of highest search quality that hold the budget re-timed (the
    study's stored re-timing, re-timed first when trials finished since: searcher/report/retime.py)."""
    from .report.retime import RETIME_TOP, candidates, is_current, retime, retimed

    k = max(top, RETIME_TOP)
    if not is_current(study, k):
        retime(study, bench, log, k=k)
    again = retimed(study)
    chosen = [t for t in candidates(study, k) if t.number in again and again[t.number].holds][:top]
    if not chosen:
        missed = ", ".join(f"{n} ({r.speedup:.2f}x, low {r.low:.2f}x)" for n, r in again.items())
        raise UserError(f"no feasible trial of study {study.study_name!r} holds the budget when re-timed "
                        f"({missed}); run more trials or relax the budget before finishing")
    return chosen


def _closest_trials(study, cfg: StudyConfig, n: int = 3) -> str:
    """' (budget speedup 4.0; closest: #5 would hold speedup 3.62; ...)': the `n` finished trials nearest
    to the budget (largest relative miss, smallest first) and the budget each would hold; '' when none."""
    from optuna.trial import TrialState

    budget = Budget.from_stored({**Budget.from_section(cfg.budget).to_dict(), **(StudyRecord.of(study).budget or {})})
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        near = budget.would_hold(TrialRecord.of(t).constraints or {})
        if near is not None:
            rows.append((near[0], t.number, near[1]))
    rows.sort()
    parts = [f"#{number} would hold " + ", ".join(f"{name} {value:.2f}" for name, value in held.items())
             for _, number, held in rows[:n]]
    if not parts:
        return ""
    asked = ", ".join(f"{name} {value}" for name, value in budget.limits().items())
    return f" (budget {asked}; closest: {'; '.join(parts)})"


def check_corpus(cfg: StudyConfig):
    from .problem.corpus import check_no_overlap, load_corpus_rows
    from .problem.workbench import study_rows

    rows = load_corpus_rows(cfg)
    splits = {"validation": study_rows(cfg, "validation"),
              "test": study_rows(cfg, "test") if cfg.data.test else None}
    check_no_overlap(rows, splits)
    return rows


def final_plan(plan_dict: dict, task: str, steps: int):
    """The search plan with its distillation replaced by the finishing hyperparameters (FINISHING) at `steps` steps."""
    from slimformer.methods import Plan

    plan = Plan.from_dict(plan_dict)
    chosen = FINISHING[task]
    return replace(plan, distill=replace(plan.distill, steps=steps, losses=chosen["losses"], lr=chosen["lr"]))


def _probe_step_s(bench, corpus) -> float:
    """Seconds of one training step of the UNCOMPRESSED model on a corpus batch (plans are smaller)."""
    model = bench.model
    inputs = corpus.model_inputs(corpus.batch(corpus.epoch_batches(0)[0]))[0]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model(**inputs)[0].float().pow(2).mean().backward()
        best = min(best, time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return best * 1.3  # the teacher's forward on first sight of each example, and the optimizer


def run_finish(cfg: StudyConfig, *, storage=None, study_name=None, top: int = DEFAULT_TOP,
               steps: int | None = None, minutes: float | None = None, log=print) -> dict:
    import optuna
    from slimformer.methods import model_size, plan_of, save_compressed

    from .problem.corpus import build_corpus
    from .problem.workbench import Workbench
    from .study.records import feasible_trials, handle_for, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if minutes is not None and minutes <= 0:
        raise UserError(f"--minutes must be more than 0, got {minutes}")
    started = time.monotonic()
    deadline = None if minutes is None else started + 60 * minutes
    steps = steps or DEFAULT_STEPS
    handle = handle_for(cfg, storage, study_name)
    study = open_study(handle, read_only=True)
    stored = StudyRecord.of(study)
    if stored.baseline is None:
        raise UserError(f"study {handle.name!r} was not written by slimformer search")
    if not feasible_trials(study):
        raise UserError(f"study {handle.name!r} has no feasible trial yet{_closest_trials(study, cfg)}: run more "
                        "trials (or relax the budget) before finishing")
    rows = check_corpus(cfg)
    metric = stored.metric
    bench = Workbench(cfg, log=log)
    bench.adopt(stored.baseline)
    chosen = _candidates(study, bench, top, log)
    stored = {r["search_trial"] for r in final_rows(handle.url, handle.name)}
    todo = [t for t in chosen if t.number not in stored]
    for t in chosen:
        if t.number in stored:
            log(f"trial {t.number}: its final model is stored already (kept)")
    corpus = build_corpus(rows, bench.task, cfg.data.batch_size, seed=cfg.search.seed or 0)
    finals = open_finals(handle.url, handle.name, create=True)
    write_study(finals, search_study=handle.name)
    score_s = 0.0
    if todo:
        t0 = time.perf_counter()
        base_val = bench.quality(bench.model, full=True)["quality"]
        base_test = bench.test_quality(bench.model)
        score_s = time.perf_counter() - t0
        write_study(finals, baseline={"quality": base_val, "test_quality": base_test})
        per_step = _probe_step_s(bench, corpus)
        expected = len(todo) * (steps * per_step + score_s + 30)
        log(f"finish: {len(todo)} plan(s) (trials {', '.join(str(t.number) for t in todo)}) x {steps} steps on "
            f"{len(corpus)} corpus texts ({corpus.batch_size} a batch); expected at most ~{expected / 60:.1f} min "
            f"(a full-model training step takes {per_step:.2f} s here; the plans are smaller)")
        if deadline is not None and started + expected > deadline:
            log(f"--minutes {minutes:g} caps it: each plan gets an equal share of the time left and runs the steps "
                "that fit")
    for i, cand in enumerate(todo):
        searched = TrialRecord.of(cand)
        t_plan = time.monotonic()
        plan_deadline = None
        if deadline is not None:
            share = (deadline - t_plan - TIMING_RESERVE_S) / (len(todo) - i)
            plan_deadline = t_plan + share - score_s
        log(f"trial {cand.number} ({i + 1}/{len(todo)}): search {metric} {cand.values[0]:.2f} at "
            f"{searched.speedup:.2f}x; rebuilding and distilling ...")
        plan = final_plan(searched.plan, cfg.task.type, steps)
        model = bench.build(plan, log=log, corpus=corpus, deadline=plan_deadline)
        ran = plan_of(model).distill.steps
        scored = bench.deployed(model, searched.runtime)  # as its runtime runs it, as exported
        val = bench.quality(scored, full=True)["quality"]
        test = bench.test_quality(scored)
        out = final_folder(cfg, handle.name, cand.number)
        out.parent.mkdir(parents=True, exist_ok=True)
        size = model_size(model, plan.group_size)
        save_compressed(model, None, out, tokenizer=bench.tokenizer, force=True,
                        metrics={"quality": val, "test_quality": test, "final_of_trial": cand.number})
        final = FinalRecord(search_trial=cand.number, plan=plan_of(model).to_dict(), steps=ran, steps_asked=steps,
                            quality=val, test_quality=test, search_quality=cand.values[0],
                            search_speedup=searched.speedup, size_mb=size["size_mb"], params=size["params"],
                            simulated=size["simulated"], path=str(out.resolve()), wall_s=time.monotonic() - t_plan)
        finals.add_trial(optuna.trial.create_trial(value=val, user_attrs=final.attrs()))
        log(f"trial {cand.number}: final model stored: {metric} {val:.2f} on the full validation split"
            + (f", {test:.2f} on test" if test is not None else "") + f" ({ran} steps"
            + (f" of {steps}: capped by --minutes" if ran < steps else "") + f", {final.wall_s / 60:.1f} min)")
    _retime(study, bench, finals, handle, log)
    return {"study": handle.name, "final_study": finals.study_name, "storage": handle.url, "metric": metric,
            "finals": final_rows(handle.url, handle.name, study_budget(study)), "budget": study_budget(study).to_dict(),
            "baseline": StudyRecord.of(finals).baseline, "wall_s": time.monotonic() - started,
            "chosen": [t.number for t in chosen]}


def _retime(study, bench, finals, handle, log) -> None:
    """All stored final models against the uncompressed model in one interleaved measurement: the
    search's re-timing (searcher/report/retime.py `retime_models`), stored as the final study's."""
    from slimformer.methods import load_compressed

    from .report.retime import retime_models, retime_rounds

    rows = final_rows(handle.url, handle.name)
    if not rows:
        return
    log(f"re-timing {len(rows)} final model(s) against the uncompressed model in one interleaved measurement "
        f"({retime_rounds(bench.cfg)} rounds) ...")
    models = {r["search_trial"]: load_compressed(r["path"])[0] for r in rows}
    searched = {t.number: t for t in study.get_trials(deepcopy=False)}
    runtimes = {n: TrialRecord.of(searched[n]).runtime if n in searched else None for n in models}
    record = retime_models(bench, models, runtimes, study_budget(study), StudyRecord.of(study).baseline["latency_ms"])
    finals.set_user_attr(TIMING_ATTR, record.to_dict())


def render_finish(summary: dict) -> str:
    """The final models as a table: validation and test quality, steps, speedup re-timed."""
    metric, base = summary["metric"], summary.get("baseline") or {}
    lines = [f"final models of study {summary['study']} (stored as {summary['final_study']!r}; "
             f"{summary['wall_s'] / 60:.1f} min)"]
    if base:
        test = base.get("test_quality")
        lines.append(f"uncompressed: {metric} {base['quality']:.2f} validation"
                     + (f", {test:.2f} test" if test is not None else ""))
    lines += final_table(summary["finals"])
    return "\n".join(lines)


def export_final_model(url: str, study, number: int | None, out, force: bool, check_out, fmt: str | None = None,
                       make_bench=None) -> str | None:
    """`export --final N` (number given): that search trial's final model; `export --best` (None):
    the best final model that holds the budget re-timed, or None when there is none (the caller
    then exports the best search trial that holds). `fmt` None: the format of the runtime its search
    trial was fastest in. Returns the line to print."""
    from .devices.artifacts import default_format, require_format

    budget = study_budget(study)
    if number is None:
        row = best_holding_final(url, study.study_name, budget)
        if row is None:
            return None
    else:
        row = next((r for r in final_rows(url, study.study_name, budget) if r["search_trial"] == number), None)
        if row is None:
            raise UserError(f"trial {number} has no final model; run `slimformer finish` (it finishes the best "
                            "feasible trials) or export the search trial with --trial N")
    if fmt is None:
        searched = [t for t in study.get_trials(deepcopy=False) if t.number == row["search_trial"]]
        fmt = default_format((TrialRecord.of(searched[0]).runtime if searched else None) or "eager")
        require_format(fmt)
    check_out(out, force)
    finals = open_finals(url, study.study_name)
    baseline = dict(StudyRecord.of(finals).baseline or {}) if finals is not None else {}
    return export_final(row, out, force, StudyRecord.of(study).metric, fmt, make_bench, baseline)


def export_final(row: dict, out: Path, force: bool, metric: str, fmt: str = "pytorch", make_bench=None,
                 baseline: dict | None = None) -> str:
    """Write a final model's export to `out` (loaded and verified first): the pytorch layout, or
    an artifact of `fmt` through searcher/devices/artifacts.py (`make_bench()` gives its Workbench;
    `baseline`: the uncompressed model's validation and test quality, for the model card).
    Returns a one-line summary."""
    from slimformer.methods import load_compressed
    from slimformer.methods.export import ExportError

    from .devices.artifacts import export_model

    try:
        model, tokenizer, plan = load_compressed(row["path"])
        metrics = {k: row.get(k) for k in ("quality", "test_quality", "size_mb", "params", "simulated", "steps")}
        metrics.update({"speedup": row.get("speedup_retimed"), "final_of_trial": row["search_trial"],
                        "metric": metric, "baseline": {**(baseline or {}), "split": "full validation"}})
        if row.get("retimed") is not None:  # the interval of finish's re-timing, as for search trials
            metrics["retimed"] = row["retimed"]
        if fmt == "pytorch":
            from slimformer.methods import save_compressed

            save_compressed(model, plan, out, tokenizer=tokenizer, metrics=metrics, force=force)
        else:
            export_model(fmt, make_bench(), model, plan, out, metrics, force=force)
    except ExportError as exc:
        raise UserError(f"final model of trial {row['search_trial']}: {exc}") from None
    speed = row.get("speedup_retimed")
    test = row.get("test_quality")
    return (f"exported the final model of trial {row['search_trial']} to {out} as {fmt} ({metric} "
            f"{row['quality']:.2f} validation" + (f", {test:.2f} test" if test is not None else "")
            + (f", {speed:.2f}x re-timed" if speed is not None else "") + f", {row['steps']} distillation steps)")


def export_trial(cfg, study, best: bool, number: int | None, out: Path, force: bool, fmt: str | None, check_out,
                 log) -> str:
    """`export --best` when no final model holds (the best search trial that holds re-timed) or
    `export --trial N`: rebuild the trial from its plan and write it (`fmt` None: the format of the
    runtime it was timed in). Returns the lines to print."""
    from optuna.trial import TrialState
    from slimformer.methods import Plan
    from slimformer.methods.export import ExportError

    from .devices.adaptive import INTERVAL_KEYS
    from .devices.artifacts import default_format, export_model, require_format
    from .problem.workbench import Workbench
    from .report.retime import choose_best, miss_warning, retimed
    from .study.records import feasible_trials

    bench = None
    if best:
        if not feasible_trials(study):
            raise UserError("no finished trial meets the budget yet; use --trial N to export another one")
        check_out(out, force)
        if fmt:
            require_format(fmt)
        bench = Workbench(cfg, log=log)
        trial = choose_best(study, bench, log)  # the best that holds re-timed (searcher/report/retime.py)
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not matches or matches[0].state != TrialState.COMPLETE or TrialRecord.of(matches[0]).plan is None:
            raise UserError(f"trial {number} is not a finished trial of this study")
        trial = matches[0]
        check_out(out, force)
        warning = miss_warning(study, trial)
        if warning:
            log(f"warning: {warning}; exporting it as asked")
    searched = TrialRecord.of(trial)
    fmt = fmt or default_format(searched.runtime or cfg.device.runtime)
    require_format(fmt)  # not installed: one line before anything is built
    bench = bench or Workbench(cfg, log=log)
    plan = Plan.from_dict(searched.plan)
    log(f"rebuilding trial {trial.number} from its plan ...")
    model = bench.build(plan)
    metrics = searched.attrs("quality", "latency_ms", "speedup", "size_mb", "params", "simulated", *INTERVAL_KEYS)
    again = retimed(study).get(trial.number)
    if again is not None:
        metrics["retimed"] = again.to_dict()
    base = StudyRecord.of(study).baseline or {}
    metrics.update({"trial": trial.number, "study": study.study_name, "metric": bench.task.metric,
                    "baseline": {"quality": base.get("quality"), "split": "the search's validation split"}})
    try:
        export_model(fmt, bench, model, plan, out, metrics, force=force, log=log)
    except ExportError as exc:
        raise UserError(str(exc)) from None
    timed = (f"{again.speedup:.2f}x re-timed (lower bound {again.low:.2f}x)" if again is not None
             else f"{metrics['speedup']:.2f}x in the search")
    return (f"exported trial {trial.number} to {out} as {fmt} ({metrics['metric']} {metrics['quality']:.2f}, "
            f"{timed}, {metrics['size_mb']:.1f} MB)")
