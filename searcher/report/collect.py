"""Study reports: baseline, feasible Pareto front (re-scored on the full validation split), the
final re-timing (searcher/report/retime.py) and the best trial that holds the budget re-timed,
cost-model accuracy; as text, JSON and an HTML plot. Works while the study is still running.

Why re-time: a search keeps the best plan that measured within the budget, and among many
plans near the edge that is partly the one whose measurement came out fastest (a GPT-2 study
here: trial 21 measured 1.51x in the search and 1.42x in three later measurements, under a 1.5x
budget). The report re-times the best feasible trials when trials finished since the stored
re-timing, and stores what it measures (and the full-split scores) in the study's storage."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from ..config import StudyConfig
from ..errors import UserError
from ..study.budget import Budget
from ..study.finals import final_rows, final_table
from ..study.records import (
    FULL_QUALITY_ATTR,
    RETIMED_ATTR,
    StudyRecord,
    TrialRecord,
    best_feasible,
    handle_for,
    open_study,
    study_budget,
)
from ..study.trial import runtime_latencies
from .retime import best_holding, is_current, retime, retimed

__all__ = ["report_study", "pareto_front", "render_text", "write_html", "FULL_QUALITY_ATTR"]



def _row(t) -> dict:
    a = TrialRecord.of(t)
    return {
        "number": t.number, **a.attrs(*ROW_KEYS), "feasible": bool(a.feasible), "simulated": bool(a.simulated),
        "latency_source": a.latency_source or "measured",
        **{k: v for k, v in a.attrs(*DECODER_KEYS).items() if v is not None},  # decoders (device.generate)
    }


# the report's row of a trial: these TrialRecord fields, feasible, simulated, latency_source, and DECODER_KEYS
ROW_KEYS = ("quality", "latency_ms", "speedup", "speedup_low", "speedup_high", "rounds", "size_mb", "params",
            "predicted_latency_ms", "plan", "transferred_from", "runtime", "runtime_speedups", "predicted_runtime_ms")


# a decoder's trial (device.generate, docs/decoders.md): latency_ms is decode ms per generated token
DECODER_KEYS = ("latency_phase", "decode_tokens_per_s", "prefill_ms", "prefill_speedup", "prefill_speedup_low",
                "prefill_speedup_high")


def pareto_front(rows: list[dict], keys=("quality", "latency_ms")) -> list[dict]:
    """Non-dominated rows: quality maximised, the other keys minimised."""
    def dominates(a, b):
        better_or_equal = a["quality"] >= b["quality"] and all(a[k] <= b[k] for k in keys[1:])
        strictly = a["quality"] > b["quality"] or any(a[k] < b[k] for k in keys[1:])
        return better_or_equal and strictly

    front = [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: r["latency_ms"])


def _rescore(study, bench, rows: list[dict], log, test: bool = False) -> tuple[float, float | None]:
    """Quality of each row's plan on the FULL validation split, and on data.test when `test`,
    stored in the study (by trial). Returns the baseline's (validation, test)."""
    stored = dict(study.user_attrs.get(FULL_QUALITY_ATTR) or {"trials": {}})
    trials, tests = dict(stored["trials"]), dict(stored.get("test") or {})
    todo = [r for r in rows if str(r["number"]) not in trials or (test and str(r["number"]) not in tests)]
    if todo or "baseline" not in stored or (test and "baseline_test" not in stored):
        for r in todo:
            log(f"re-scoring trial {r['number']} on the full validation split" + (" and on test ..." if test else " ..."))
            model = bench().as_scored(r["plan"], r.get("runtime"))
            trials[str(r["number"])] = bench().quality(model, full=True)["quality"]
            if test:
                tests[str(r["number"])] = bench().test_quality(model)
        if "baseline" not in stored:
            stored["baseline"] = bench().quality(bench().model, full=True)["quality"]
        if test and "baseline_test" not in stored:
            stored["baseline_test"] = bench().test_quality(bench().model)
        stored["trials"], stored["test"] = trials, tests
        try:
            study.set_user_attr(FULL_QUALITY_ATTR, stored)
        except Exception as exc:  # noqa: BLE001 - a read-only storage: still reported, not stored
            from ..study.storage import storage_fault

            if not storage_fault(exc):
                raise
            log(f"note: the full-split scores could not be stored in the study ({storage_fault(exc)})")
    for r in rows:
        r["quality_full"] = trials[str(r["number"])]
        r["quality_test"] = tests.get(str(r["number"])) if test else None
    return stored["baseline"], stored.get("baseline_test") if test else None


def report_study(cfg: StudyConfig, storage: str | None = None, study_name: str | None = None,
                 rescore: bool = True, log=print) -> dict:
    handle = handle_for(cfg, storage, study_name)
    study = open_study(handle, read_only=True)
    stored = StudyRecord.of(study)
    if stored.baseline is None:
        raise UserError(f"study {handle.name!r} was not written by slimformer search")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and TrialRecord.of(t).quality is not None]
    rows = [_row(t) for t in complete]
    by_number = {r["number"]: r for r in rows}
    keys = ("quality", "latency_ms", "size_mb") if "size" in (stored.objectives or []) else ("quality", "latency_ms")
    front = pareto_front([r for r in rows if r["feasible"]], keys)
    baseline = dict(stored.baseline)
    benches = []

    def bench():  # the Workbench, loaded only when something must be measured
        if not benches:
            from ..problem.workbench import Workbench

            benches.append(Workbench(cfg, log=log))
        return benches[0]

    if rescore and not is_current(study):
        retime(study, bench(), log)
    again = retimed(study)
    timed = [by_number[n] for n in sorted(again, key=lambda n: -by_number[n]["quality"]) if n in by_number]
    for r in timed:
        a = again[r["number"]]
        r.update(speedup_retimed=a.speedup, retimed_low=a.low, retimed_high=a.high, holds_retimed=a.holds)
    whole = cfg.data.validation_size is None  # the search scored the whole split already
    if whole:
        for r in front + timed:
            r["quality_full"] = r["quality"]
        baseline["quality_full"] = baseline["quality"]
    if rescore and (front or timed) and (not whole or cfg.data.test is not None):
        full, baseline["quality_test"] = _rescore(
            study, bench, list({id(r): r for r in front + timed}.values()), log, test=cfg.data.test is not None)
        baseline["quality_full"] = baseline["quality"] if whole else full
    best, searched = best_holding(study), best_feasible(study)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    return {
        "study": handle.name, "storage": handle.url, "metric": stored.metric,
        "budget": stored.budget, "device": stored.device,
        "baseline": baseline, "n_trials": len(trials), "n_complete": len(complete),
        "n_failed": len(failed), "n_rejected": sum(t.state == TrialState.PRUNED for t in trials),
        "n_running": sum(t.state == TrialState.RUNNING for t in trials),
        "n_feasible": sum(r["feasible"] for r in rows),
        "failures": [{"number": t.number, "reason": TrialRecord.of(t).fail_reason} for t in failed],
        "pareto": front, "trials": rows,
        # the final re-timing: the best feasible trials, one fresh measurement (searcher/report/retime.py)
        "retimed": timed, "retimed_current": is_current(study),
        "retiming": {k: v for k, v in (study.user_attrs.get(RETIMED_ATTR) or {}).items() if k != "trials"},
        # best under the budget: the best re-timed trial that holds (None: not re-timed, or none holds)
        "best": None if best is None else by_number.get(best.number),
        "best_search": None if searched is None else by_number.get(searched.number),
        "cost_model": _cost_model_accuracy(rows, stored.baseline.get("latency_ms")),
        # final models (slimformer finish), from the sibling study <name>:final (searcher/study/finals.py)
        "final": final_rows(handle.url, handle.name, study_budget(study)),
    }


def _accuracy(pairs: list[tuple[float, float]]) -> dict:
    if len(pairs) < 3:
        return {"mape": None, "spearman": None, "n": len(pairs)}
    from scipy.stats import spearmanr

    pred, meas = zip(*pairs)
    mape = sum(abs(p - m) / m for p, m in pairs) / len(pairs) * 100
    return {"mape": mape, "spearman": float(spearmanr(pred, meas).statistic), "n": len(pairs)}


def _cost_model_accuracy(rows: list[dict], baseline_ms: float | None) -> dict:
    """The prediction made before measuring vs the measurement (the counted runtime's), and under
    `device.runtime: auto` per runtime (`by_runtime`: its prediction vs its own first estimate)."""
    measured = [r for r in rows if r.get("predicted_latency_ms") and r["latency_source"] == "measured"]
    out = _accuracy([(r["predicted_latency_ms"], r["latency_ms"]) for r in measured])
    by_runtime: dict[str, list] = {}
    for r in measured:
        if r.get("predicted_runtime_ms") and baseline_ms:
            got = runtime_latencies(r, baseline_ms)
            for rt, ms in r["predicted_runtime_ms"].items():
                if got.get(rt):
                    by_runtime.setdefault(rt, []).append((ms, got[rt]))
    if by_runtime:
        out["by_runtime"] = {rt: _accuracy(pairs) for rt, pairs in sorted(by_runtime.items())}
    return out


def _bounds(low, high) -> str:
    return "-" if low is None else f"[{low:.2f}, {high:.2f}]"


def _full(r, key: str = "quality_full") -> str:
    return "-" if r.get(key) is None else f"{r[key]:.2f}"


def render_text(rep: dict) -> str:
    b, metric = rep["baseline"], rep["metric"]
    conf = (rep.get("budget") or {}).get("confidence", 0.9)
    lines = [f"study {rep['study']} ({rep['storage']}): {rep['n_complete']} complete, {rep['n_failed']} failed, "
             f"{rep['n_rejected']} skipped by the cost model, {rep['n_running']} running, {rep['n_feasible']} within budget {_budget_text(rep['budget'])}",
             _device_text(rep.get("device")),
             f"baseline: {metric} {b['quality']:.2f} (search split)"
             + (f", {b['quality_full']:.2f} (full split)" if "quality_full" in b else "")
             + (f", {b['quality_test']:.2f} (test)" if b.get("quality_test") is not None else "")
             + f", {b['latency_ms']:.1f} ms, {b['size_mb']:.1f} MB",
             "", f"feasible Pareto front (speedup interval: one-sided {conf:.0%} bounds from the trial's rounds):",
             f"{'trial':>5} {metric:>9} {'full':>7} {'test':>7} {'latency':>9} {'speedup':>8} {'interval':>14} "
             f"{'rounds':>6} {'re-timed':>8} {'size MB':>8}  runtime"]
    for r in rep["pareto"]:
        again = r.get("speedup_retimed")
        lines.append(f"{r['number']:>5} {r['quality']:>9.2f} {_full(r):>7} {_full(r, 'quality_test'):>7} "
                     f"{r['latency_ms']:>7.1f}ms {r['speedup']:>7.2f}x "
                     f"{_bounds(r.get('speedup_low'), r.get('speedup_high')):>14} {r.get('rounds') or '-'!s:>6} "
                     f"{'-' if again is None else f'{again:.2f}x':>8} {r['size_mb']:>8.1f}  {r.get('runtime') or '-'}"
                     + ("  over budget when re-timed" if r.get("holds_retimed") is False else "")
                     + ("  simulated bits" if r["simulated"] else "")
                     + ("  latency predicted" if r["latency_source"] == "predicted" else ""))
    if not rep["pareto"]:
        lines.append("  (no trial meets the budget yet)")
    timing = rep.get("retiming") or {}
    if rep.get("retimed"):
        target = timing.get("target")
        lines += ["", f"re-timed: the {len(rep['retimed'])} best feasible trials in one fresh interleaved measurement "
                  f"({timing.get('rounds')} rounds); holds = one-sided {conf:.0%} lower bound"
                  + (f" >= {target:.2f}x" if target else "")
                  + ("" if rep.get("retimed_current", True) else " (measured before the latest trials finished)"),
                  f"{'trial':>5} {metric:>9} {'full':>7} {'search':>8} {'re-timed':>8} {'interval':>14}  holds"]
        for r in rep["retimed"]:
            lines.append(f"{r['number']:>5} {r['quality']:>9.2f} {_full(r):>7} {r['speedup']:>7.2f}x "
                         f"{r['speedup_retimed']:>7.2f}x {_bounds(r['retimed_low'], r['retimed_high']):>14}  "
                         + ("yes" if r["holds_retimed"] else "no"))
    best, searched = rep["best"], rep.get("best_search")
    if best:
        lines += ["", f"best under the budget: trial {best['number']} ({metric} {best['quality']:.2f}, "
                  f"{best['speedup_retimed']:.2f}x re-timed, lower bound {best['retimed_low']:.2f}x; "
                  f"{best['size_mb']:.1f} MB)"]
    elif searched:
        lines += ["", "best under the budget: " + ("none holds the budget when re-timed; export one anyway with "
                                                   f"slimformer export --trial {searched['number']}"
                                                   if rep.get("retimed") else
                                                   "not re-timed yet (run the report without --no-rescore)")]
    if best and searched and searched["number"] != best["number"] and searched.get("holds_retimed") is False:
        lines.append(f"  note: the best search trial {searched['number']} ({metric} {searched['quality']:.2f}, "
                     f"{searched['speedup']:.2f}x in the search) re-timed at {searched['speedup_retimed']:.2f}x "
                     f"misses the budget: its margin in the search was measurement noise")
    if rep.get("final"):
        lines += ["", "final models (slimformer finish; valid = the full validation split):", *final_table(rep["final"])]
    cm = rep["cost_model"]
    for what, acc in [("", cm)] + [(f" ({rt})", a) for rt, a in (cm.get("by_runtime") or {}).items()]:
        if acc["n"]:
            lines.append(f"cost model{what}: MAPE {acc['mape']:.1f}%, Spearman {acc['spearman']:.3f} over {acc['n']} "
                         "trials" if acc["mape"] is not None else f"cost model{what}: {acc['n']} predictions (too few "
                         "to score)")
    return "\n".join(lines)


def _device_text(dev: dict | None) -> str:
    if not dev:
        return "device: unknown"
    text = (f"device: {dev.get('cpu', '?')}, {dev.get('threads', '?')} threads, runtime {dev.get('runtime', '?')}, "
            f"batch {dev.get('batch_size', '?')} x {dev.get('seq_len', '?')} tokens (every latency is for this)")
    if dev.get("latency_phase") == "decode":  # device.generate: the decoder's two figures
        text = (f"device: {dev.get('cpu', '?')}, {dev.get('threads', '?')} threads, runtime {dev.get('runtime', '?')}; "
                f"latency = decode ms per generated token (greedy, batch 1, KV cache, {dev['new_tokens']} tokens "
                f"after a {dev['prompt_tokens']}-token prompt); speedup = decode speedup; prefill of the original "
                f"{dev['prefill_ms']:.1f} ms (time to first token)")
    if dev.get("attention"):
        timed = ", ".join(f"{k} {v:.2f} ms" for k, v in (dev.get("attention_ms") or {}).items())
        text += (f"\n  baseline: the uncompressed float32 model in eager PyTorch with {dev['attention']} attention"
                 + (f" (the faster stock setting here: {timed})" if timed else ""))
    if dev.get("flags") is not None:
        text += f"\n  ISA flags: {', '.join(dev['flags']) or 'none of those looked for'}"
    for runtime, formats in (dev.get("formats") or {}).items():  # what runs on a real kernel here
        text += f"\n  {runtime} runs here on real kernels: {', '.join(formats)}"
    for runtime, u in (dev.get("uncompressed") or {}).items():  # what each runtime alone buys
        text += f"\n  uncompressed model in {runtime}: {u['latency_ms']:.2f} ms, {u['speedup']:.2f}x the baseline"
    return text


def _budget_text(budget: dict | None) -> str:
    if not budget:
        return ""
    parts = [f"{k}={v}" for k, v in budget.items() if v is not None]
    return f"({', '.join(parts)})" if parts else "(no budget)"


def write_html(rep: dict, path: Path) -> list[Path]:
    """An interactive quality-vs-latency plot (plotly) and a PNG next to it (matplotlib)."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise UserError("--html needs plotly: pip install 'slimformer[plot]'") from None
    rows = rep["trials"]
    metric = rep["metric"]
    fig = go.Figure()
    for feasible, color, name in ((True, "#1f77b4", "within budget"), (False, "#bbbbbb", "over budget")):
        sel = [r for r in rows if r["feasible"] == feasible]
        fig.add_trace(go.Scatter(
            x=[r["latency_ms"] for r in sel], y=[r["quality"] for r in sel], mode="markers", name=name,
            marker={"color": color, "size": 9},
            text=[f"trial {r['number']}<br>{r['speedup']:.2f}x, {r['size_mb']:.1f} MB" for r in sel],
            hovertemplate="%{text}<br>%{y:.2f} @ %{x:.1f} ms<extra></extra>"))
    front = rep["pareto"]
    fig.add_trace(go.Scatter(x=[r["latency_ms"] for r in front], y=[r["quality"] for r in front],
                             mode="lines+markers", name="Pareto front", line={"color": "#d62728"},
                             text=[f"trial {r['number']}" for r in front],
                             hovertemplate="front: %{text}<br>%{y:.2f} @ %{x:.1f} ms<extra></extra>"))
    b = rep["baseline"]
    fig.add_trace(go.Scatter(x=[b["latency_ms"]], y=[b["quality"]], mode="markers", name="uncompressed",
                             marker={"symbol": "star", "size": 14, "color": "#2ca02c"}))
    limit = Budget.from_stored(rep.get("budget")).latency_limit(b["latency_ms"])
    if limit:
        fig.add_vline(x=limit, line_dash="dash", annotation_text="latency budget")
    fig.update_layout(title=f"{rep['study']}: {metric} vs latency ({(rep.get('device') or {}).get('cpu', '')})",
                      xaxis_title="latency (ms, baseline-normalised)", yaxis_title=metric, template="plotly_white")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)
    png = path.with_suffix(".png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig2, ax = plt.subplots(figsize=(7, 4.5))
    for feasible, color, name in ((False, "#bbbbbb", "over budget"), (True, "#1f77b4", "within budget")):
        sel = [r for r in rows if r["feasible"] == feasible]
        ax.scatter([r["latency_ms"] for r in sel], [r["quality"] for r in sel], c=color, label=name, s=25)
    ax.plot([r["latency_ms"] for r in front], [r["quality"] for r in front], c="#d62728", label="Pareto front")
    ax.scatter([b["latency_ms"]], [b["quality"]], marker="*", s=160, c="#2ca02c", label="uncompressed")
    if limit:
        ax.axvline(limit, ls="--", c="k", lw=1, label="latency budget")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel(metric)
    ax.set_title(rep["study"])
    ax.legend(fontsize=8)
    fig2.tight_layout()
    fig2.savefig(png, dpi=110)
    plt.close(fig2)
    return [path, png]
