"""Transfer to a new device: compare the study that was searched on device A with the two
transferred studies on device B (latency measured for every plan / predicted after 5 anchors).

    # device A: the 60-trial study of studies/minilm-2x.yaml (2 threads), searched as usual
    slimformer search studies/minilm-2x.yaml
    # device B: the same file with device.threads: 1, plus
    #   transfer: {source: <A's storage>, latency: measure}   (study name "meas")
    #   transfer: {source: <A's storage>, latency: predict}   (study name "pred")
    slimformer search B.yaml --study-name meas --transfer-latency measure --trials 60
    slimformer search B.yaml --study-name pred --transfer-latency predict --trials 60
    python benchmarks/transfer.py --a A.db --b B_FOLDER --wall-a 519 --wall-meas S --wall-pred S

Writes benchmarks/transfer_results.{md,json}: wall time of each study, the best plan under the
budget on B by each route, and how well predicted speedups on B match the measured ones
(MAPE, Spearman, agreement on which plans meet the budget).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
from _report import write_md
from optuna.trial import TrialState
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]


def _load(path: str, name: str):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{Path(path).resolve()}")


def _complete(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def _best(trials, budget):
    ok = [t for t in trials if t.user_attrs["speedup"] >= budget]
    return max(ok, key=lambda t: t.user_attrs["quality"]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="storage of the study on device A")
    ap.add_argument("--a-name", default="minilm-2x")
    ap.add_argument("--b", required=True, help="folder of device B's study files (meas.db, pred.db)")
    ap.add_argument("--wall-a", type=float, required=True, help="wall seconds of the study on A")
    ap.add_argument("--wall-meas", type=float, required=True)
    ap.add_argument("--wall-pred", type=float, required=True)
    ap.add_argument("--budget", type=float, default=2.0, help="speedup budget")
    ap.add_argument("--note", default="", help="a line about the conditions of the run, printed in the results")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "transfer_results"))
    args = ap.parse_args()

    b = Path(args.b)
    a, meas, pred = _load(args.a, args.a_name), _load(b / "meas.db", "meas"), _load(b / "pred.db", "pred")
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
        "wall_s": {"A": args.wall_a, "B measured": args.wall_meas, "B predicted": args.wall_pred},
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
    lines = ["# Transfer to a new device", "", "Commands: see `benchmarks/transfer.py`.", "",
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
              f"- Uncompressed latency: A {res['baseline_ms']['A']:.1f} ms, B {res['baseline_ms']['B measured']:.1f} ms."]
    write_md(args.out, lines, args.note)


if __name__ == "__main__":
    main()
