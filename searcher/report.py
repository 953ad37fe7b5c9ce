"""Study reports: baseline, feasible Pareto front (re-scored on the full validation split and
re-timed in one fresh measurement), best trial under the budget, cost-model accuracy; as text,
JSON and an HTML plot. Read-only: works while the study is still running.

Why re-time: a search keeps the best plan that measured within the budget, and among many
plans near the edge that is partly the one whose single measurement came out fastest (a GPT-2
study here: trial 21 measured 1.51x in the search and 1.42x in three later measurements, under a
1.5x budget). The report times the front again, all plans against the uncompressed model in
the same interleaved rounds (twice the study's rounds), and says when the best trial no longer
holds the budget, and which front trial does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from optuna.trial import TrialState

from .config import StudyConfig
from .errors import UserError
from .study import best_feasible, handle_for, open_study

__all__ = ["report_study", "pareto_front", "render_text", "write_html"]


def _row(t) -> dict:
    a = t.user_attrs
    return {
        "number": t.number, "quality": a.get("quality"), "latency_ms": a.get("latency_ms"),
        "speedup": a.get("speedup"), "size_mb": a.get("size_mb"), "params": a.get("params"),
        "feasible": bool(a.get("feasible")), "simulated": bool(a.get("simulated")),
        "predicted_latency_ms": a.get("predicted_latency_ms"), "plan": a.get("plan"),
        "latency_source": a.get("latency_source", "measured"), "transferred_from": a.get("transferred_from"),
    }


def pareto_front(rows: list[dict], keys=("quality", "latency_ms")) -> list[dict]:
    """Non-dominated rows: quality maximised, the other keys minimised."""
    def dominates(a, b):
        better_or_equal = a["quality"] >= b["quality"] and all(a[k] <= b[k] for k in keys[1:])
        strictly = a["quality"] > b["quality"] or any(a[k] < b[k] for k in keys[1:])
        return better_or_equal and strictly

    front = [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: r["latency_ms"])


def _cache_path(cfg: StudyConfig, name: str) -> Path:
    folder = cfg.path.parent if cfg.path else Path.cwd()
    return folder / f"{name}.rescored.json"


def _plan_key(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _rescore(cfg: StudyConfig, name: str, rows: list[dict], log) -> None:
    """Quality of each front plan on the FULL validation split, and its speedup re-timed (both
    cached by plan, next to the study file)."""
    from slimformer.methods import Plan

    from .latency import measure_latency
    from .workbench import Workbench

    path = _cache_path(cfg, name)
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        cache = {}
    todo = [r for r in rows if _plan_key(r["plan"]) not in cache]
    untimed = [r for r in rows if "retimed:" + _plan_key(r["plan"]) not in cache]
    if todo or untimed:
        bench = Workbench(cfg, log=log)
        for r in todo:
            log(f"re-scoring trial {r['number']} on the full validation split ...")
            cache[_plan_key(r["plan"])] = bench.quality(bench.build(Plan.from_dict(r["plan"])), full=True)["quality"]
        if "baseline" not in cache:
            cache["baseline"] = bench.quality(bench.model, full=True)["quality"]
        if untimed:
            log(f"re-timing {len(untimed)} front trial(s) against the uncompressed model ...")
            runners = {"baseline": bench.runner(bench.model)}
            for r in untimed:  # structure only: the same shapes and kernels, no recovery training
                runners[str(r["number"])] = bench.runner(bench.build(Plan.from_dict(r["plan"]), structure_only=True))
            dev = cfg.device
            lat = measure_latency(runners, baseline="baseline", rounds=2 * dev.rounds, warmup=dev.warmup,
                                  threads=dev.threads)
            for r in untimed:
                cache["retimed:" + _plan_key(r["plan"])] = lat[str(r["number"])].speedup
        try:
            path.write_text(json.dumps(cache, indent=1))
        except OSError:
            pass  # read-only folder: the figures are still reported, just not cached
    for r in rows:
        r["quality_full"] = cache[_plan_key(r["plan"])]
        r["speedup_retimed"] = cache["retimed:" + _plan_key(r["plan"])]
    return cache.get("baseline")


def holds_budget(budget: dict | None, baseline_ms: float, speedup: float) -> bool:
    """Whether a plan running `speedup` times faster than the uncompressed model (which took
    `baseline_ms` in the study) meets the latency side of the budget."""
    budget = budget or {}
    if budget.get("speedup") is not None and speedup < budget["speedup"]:
        return False
    return budget.get("latency_ms") is None or baseline_ms / speedup <= budget["latency_ms"]


def report_study(cfg: StudyConfig, storage: str | None = None, study_name: str | None = None,
                 rescore: bool = True, log=print) -> dict:
    handle = handle_for(cfg, storage, study_name)
    study = open_study(handle, read_only=True)
    if "baseline" not in study.user_attrs:
        raise UserError(f"study {handle.name!r} was not written by slimformer search")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "quality" in t.user_attrs]
    rows = [_row(t) for t in complete]
    keys = ("quality", "latency_ms", "size_mb") if "size" in study.user_attrs.get("objectives", []) else ("quality", "latency_ms")
    front = pareto_front([r for r in rows if r["feasible"]], keys)
    baseline = dict(study.user_attrs["baseline"])
    if rescore and front:
        full = _rescore(cfg, handle.name, front, log)
        if full is not None:
            baseline["quality_full"] = full
    best = best_feasible(study)
    best_row = next((r for r in front if best is not None and r["number"] == best.number), None)
    if best is not None and best_row is None:
        best_row = _row(best)
    budget = study.user_attrs.get("budget")
    for r in front:
        if "speedup_retimed" in r:
            r["holds_retimed"] = holds_budget(budget, baseline["latency_ms"], r["speedup_retimed"])
    holding = [r for r in front if r.get("holds_retimed")]
    fallback = max(holding, key=lambda r: r["quality"]) if holding else None
    failed = [t for t in trials if t.state == TrialState.FAIL]
    return {
        "study": handle.name, "storage": handle.url, "metric": study.user_attrs.get("metric"),
        "budget": study.user_attrs.get("budget"), "device": study.user_attrs.get("device"),
        "baseline": baseline, "n_trials": len(trials), "n_complete": len(complete),
        "n_failed": len(failed), "n_rejected": sum(t.state == TrialState.PRUNED for t in trials),
        "n_running": sum(t.state == TrialState.RUNNING for t in trials),
        "n_feasible": sum(r["feasible"] for r in rows),
        "failures": [{"number": t.number, "reason": t.user_attrs.get("fail_reason")} for t in failed],
        "pareto": front, "best": best_row, "trials": rows,
        # the best front trial that still holds the budget when re-timed (None: not re-timed, or none holds)
        "best_retimed": fallback,
        "cost_model": _cost_model_accuracy(rows),
    }


def _cost_model_accuracy(rows: list[dict]) -> dict:
    pairs = [(r["predicted_latency_ms"], r["latency_ms"]) for r in rows
             if r.get("predicted_latency_ms") and r["latency_source"] == "measured"]
    if len(pairs) < 3:
        return {"mape": None, "spearman": None, "n": len(pairs)}
    from scipy.stats import spearmanr

    pred, meas = zip(*pairs)
    mape = sum(abs(p - m) / m for p, m in pairs) / len(pairs) * 100
    return {"mape": mape, "spearman": float(spearmanr(pred, meas).statistic), "n": len(pairs)}


def render_text(rep: dict) -> str:
    b = rep["baseline"]
    metric = rep["metric"]
    lines = [f"study {rep['study']} ({rep['storage']}): {rep['n_complete']} complete, {rep['n_failed']} failed, "
             f"{rep['n_rejected']} skipped by the cost model, {rep['n_running']} running, {rep['n_feasible']} within budget {_budget_text(rep['budget'])}",
             _device_text(rep.get("device")),
             f"baseline: {metric} {b['quality']:.2f} (search split)"
             + (f", {b['quality_full']:.2f} (full split)" if "quality_full" in b else "")
             + f", {b['latency_ms']:.1f} ms, {b['size_mb']:.1f} MB",
             "", "feasible Pareto front:",
             f"{'trial':>5} {metric:>9} {'full':>7} {'latency':>9} {'speedup':>8} {'re-timed':>8} {'size MB':>8}"]
    for r in rep["pareto"]:
        full, again = r.get("quality_full"), r.get("speedup_retimed")
        lines.append(f"{r['number']:>5} {r['quality']:>9.2f} {full if full is None else round(full, 2)!s:>7} "
                     f"{r['latency_ms']:>7.1f}ms {r['speedup']:>7.2f}x "
                     f"{'-' if again is None else f'{again:.2f}x':>8} {r['size_mb']:>8.1f}"
                     + ("  over budget when re-timed" if r.get("holds_retimed") is False else "")
                     + ("  simulated bits" if r["simulated"] else "")
                     + ("  latency predicted" if r["latency_source"] == "predicted" else ""))
    if not rep["pareto"]:
        lines.append("  (no trial meets the budget yet)")
    best = rep["best"]
    if best:
        lines += ["", f"best under the budget: trial {best['number']} ({metric} {best['quality']:.2f}, "
                  f"{best['speedup']:.2f}x, {best['size_mb']:.1f} MB)"]
        if best.get("holds_retimed") is False:
            alt = rep.get("best_retimed")
            lines.append(f"  warning: re-timed at {best['speedup_retimed']:.2f}x it misses the budget; its margin in the "
                         "search was measurement noise. "
                         + (f"Best trial that holds when re-timed: {alt['number']} ({metric} {alt['quality']:.2f}, "
                            f"{alt['speedup_retimed']:.2f}x re-timed): slimformer export --trial {alt['number']}"
                            if alt else "No front trial holds the budget when re-timed."))
    cm = rep["cost_model"]
    if cm["n"]:
        lines.append(f"cost model: MAPE {cm['mape']:.1f}%, Spearman {cm['spearman']:.3f} over {cm['n']} trials"
                     if cm["mape"] is not None else f"cost model: {cm['n']} predictions (too few to score)")
    return "\n".join(lines)


def _device_text(dev: dict | None) -> str:
    if not dev:
        return "device: unknown"
    text = (f"device: {dev.get('cpu', '?')}, {dev.get('threads', '?')} threads, runtime {dev.get('runtime', '?')}, "
            f"batch {dev.get('batch_size', '?')} x {dev.get('seq_len', '?')} tokens (every latency is for this)")
    if dev.get("eager_baseline_latency_ms"):  # a non-eager runtime: what the runtime alone buys
        text += (f"\n  uncompressed model: {dev['runtime_baseline_latency_ms']:.2f} ms in {dev.get('runtime')} vs "
                 f"{dev['eager_baseline_latency_ms']:.2f} ms in eager PyTorch (same rounds, "
                 f"{dev['runtime_speedup_over_eager']:.2f}x from the runtime alone)")
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
                             mode="lines", name="Pareto front", line={"color": "#d62728"}))
    b = rep["baseline"]
    fig.add_trace(go.Scatter(x=[b["latency_ms"]], y=[b["quality"]], mode="markers", name="uncompressed",
                             marker={"symbol": "star", "size": 14, "color": "#2ca02c"}))
    budget = rep.get("budget") or {}
    limit = budget.get("latency_ms") or (b["latency_ms"] / budget["speedup"] if budget.get("speedup") else None)
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
