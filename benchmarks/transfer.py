"""Transfer to a new device: the study searched on device A against the two transferred studies
on device B (latency measured for every plan / predicted after 5 anchors). The script runs all
three searches itself and times each (wall clock, in this process), so every figure it writes is
measured:

    python -m benchmarks.transfer [--study studies/minilm-2x.yaml] [--work /tmp/slimformer-transfer]

A is the study file as it is (its device.threads); B is the same file with `device.threads: 1`,
searched twice from A's storage: `--transfer-latency measure` (study "meas") and `predict`
(study "pred", after `slimformer profile --threads 1` when no profile for 1 thread is cached).
Each finished run's wall time is kept in WORK/walls.json, so a rerun reuses finished studies.

Writes benchmarks/results/transfer_results.{md,json}: wall time of each study, the best plan under the
budget on B by each route, and how well predicted speedups on B match the measured ones
(MAPE, Spearman, agreement on which plans meet the budget).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState
from scipy.stats import spearmanr

from benchmarks.common import RESULTS, write_md

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{Path(path).resolve()}")


def _complete(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def _best(trials, budget):
    ok = [t for t in trials if t.user_attrs["speedup"] >= budget]
    return max(ok, key=lambda t: t.user_attrs["quality"]) if ok else None


def device_b_study(study: Path, out: Path) -> Path:
    """The study file for device B: one thread, data paths made absolute (it lives elsewhere)."""
    cfg = yaml.safe_load(study.read_text())
    for key, value in list(cfg.get("data", {}).items()):
        if isinstance(value, str) and (study.parent / value).is_file():
            cfg["data"][key] = str((study.parent / value).resolve())
    cfg["device"] = {**cfg.get("device", {}), "threads": 1}
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def timed_runs(work: Path, steps: dict[str, list[str]]) -> dict[str, float]:
    """Run each `slimformer` command not finished before; its wall seconds (WORK/walls.json)."""
    record = work / "walls.json"
    walls = json.loads(record.read_text()) if record.is_file() else {}
    for name, args in steps.items():
        if name in walls:
            continue
        print(f"[transfer] {name}: slimformer {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "slimformer.searcher.cli", *args], check=True)
        walls[name] = time.perf_counter() - t0
        record.write_text(json.dumps(walls, indent=2))
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "minilm-2x.yaml"), help="device A's study file")
    ap.add_argument("--work", default="/tmp/slimformer-transfer", help="storages, B's study file, walls.json")
    ap.add_argument("--budget", type=float, default=2.0, help="speedup budget")
    ap.add_argument("--note", default="", help="a line about the conditions of the run, printed in the results")
    ap.add_argument("--out", default=str(RESULTS / "transfer_results"))
    args = ap.parse_args()

    study, work = Path(args.study).resolve(), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    b_study = str(device_b_study(study, work / "device-b.yaml"))
    a_db = work / "A.db"
    walls = timed_runs(work, {
        "A": ["search", str(study), "--storage", f"sqlite:///{a_db}"],
        "profile B": ["profile", "--threads", "1"],
        "B measured": ["search", b_study, "--storage", f"sqlite:///{work / 'meas.db'}", "--study-name", "meas",
                       "--transfer-from", str(a_db), "--transfer-latency", "measure"],
        "B predicted": ["search", b_study, "--storage", f"sqlite:///{work / 'pred.db'}", "--study-name", "pred",
                        "--transfer-from", str(a_db), "--transfer-latency", "predict"],
    })
    a, meas, pred = _load(a_db, study.stem), _load(work / "meas.db", "meas"), _load(work / "pred.db", "pred")
    ta, tm, tp = _complete(a), _complete(meas), _complete(pred)
    by_plan = {json.dumps(t.params, sort_keys=True): t for t in tm}
    pairs = []
    for t in tp:
        m = by_plan.get(json.dumps(t.params, sort_keys=True))
        if m is not None and t.user_attrs.get("latency_source") == "predicted":
            pairs.append((t.user_attrs["speedup"], m.user_attrs["speedup"]))
    ps, ms = zip(*pairs)
    mape = sum(abs(p - m) / m for p, m in pairs) / len(pairs) * 100
    agree = sum((p >= args.budget) == (m >= args.budget) for p, m in pairs) / len(pairs) * 100
    best = {k: _best(v, args.budget) for k, v in (("A", ta), ("B measured", tm), ("B predicted", tp))}
    best_pred = best["B predicted"]
    check = by_plan.get(json.dumps(best_pred.params, sort_keys=True)) if best_pred else None
    dev = {k: s.user_attrs.get("device", {}) for k, s in (("A", a), ("B measured", meas), ("B predicted", pred))}
    res = {
        "wall_s": walls,  # measured above, around each command
        "devices": dev,
        "baseline_ms": {k: s.user_attrs["baseline"]["latency_ms"] for k, s in
                        (("A", a), ("B measured", meas), ("B predicted", pred))},
        "best": {k: None if t is None else {"trial": t.number, "quality": t.user_attrs["quality"],
                                            "speedup": t.user_attrs["speedup"]} for k, t in best.items()},
        "best_predicted_measured_speedup": check.user_attrs["speedup"] if check else None,
        "prediction": {"n": len(pairs), "mape_speedup_pct": mape, "spearman": float(spearmanr(ps, ms).statistic),
                       "budget_agreement_pct": agree},
        "speedup_A_vs_B_spearman": float(spearmanr(
            [t.user_attrs["speedup"] for t in ta],
            [by_plan[json.dumps(t.params, sort_keys=True)].user_attrs["speedup"] for t in ta]).statistic),
    }
    Path(args.out + ".json").write_text(json.dumps(res, indent=2))
    lines = ["# Transfer to a new device", "", "Commands: see `benchmarks/transfer.py` (it runs and times them).", "",
             f"| study | device | wall time | best under the budget (speedup >= {args.budget:.1f}) |",
             "| --- | --- | ---: | --- |"]
    for k in ("A", "B measured", "B predicted"):
        d, b = dev[k], res["best"][k]
        what = "none" if b is None else f"trial {b['trial']}: {b['quality']:.2f} at {b['speedup']:.2f}x"
        lines.append(f"| {k} | {d.get('cpu')}, {d.get('threads')} thread(s), {d.get('runtime')} | "
                     f"{res['wall_s'][k] / 60:.1f} min | {what} |")
    p = res["prediction"]
    lines += ["", f"- Predicted vs measured speedup on B over the {p['n']} predicted plans: MAPE "
              f"{p['mape_speedup_pct']:.1f}%, Spearman {p['spearman']:.3f}; both agree on whether a plan meets the "
              f"budget for {p['budget_agreement_pct']:.0f}% of them.",
              f"- The predicted route's best plan measures {res['best_predicted_measured_speedup']:.2f}x on B.",
              f"- Spearman between A's and B's measured speedups of the same plans: {res['speedup_A_vs_B_spearman']:.3f}.",
              f"- Uncompressed latency: A {res['baseline_ms']['A']:.1f} ms, B {res['baseline_ms']['B measured']:.1f} ms.",
              f"- Device B's profile (`slimformer profile --threads 1`, for the predicted route): "
              f"{walls['profile B'] / 60:.1f} min."]
    write_md(args.out, lines, args.note)


if __name__ == "__main__":
    main()
