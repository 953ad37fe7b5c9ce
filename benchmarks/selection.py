"""How much does selecting on the validation split flatter the search, and does its ranking hold on test?

For each finished study given (the quickstart's, for example those benchmarks/repeatability.py leaves
in runs/repeatability/*/studies/quickstart.db): every finished trial is rebuilt from its plan and
scored as its runtime runs it (the artifact that was timed) on the whole validation split and on
data.test, which nothing selected on. Reported per study: the Spearman rank correlation between the
search's quality and test quality over all trials and over the feasible ones, the mean drop from
validation to test against the uncompressed model's, and where the search's best feasible trial
ranks on test.

    python -m benchmarks.selection runs/repeatability/seed*/studies/quickstart.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import RESULTS, spearman, write_md  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = RESULTS / "selection_results"


def score_study(path: str, log) -> dict:
    import optuna
    from optuna.trial import TrialState
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench
    from slimformer.searcher.study.records import handle_for, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_study_config(path)
    study = open_study(handle_for(cfg, None, None), read_only=True)
    bench = Workbench(cfg, log=lambda msg: None)
    bench.adopt(study.user_attrs["baseline"])
    rows = []
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and "plan" in t.user_attrs]
    for i, t in enumerate(done):
        log(f"{path}: trial {t.number} ({i + 1}/{len(done)}) ...")
        model = bench.as_scored(t.user_attrs["plan"], t.user_attrs.get("runtime"))
        rows.append({"trial": t.number, "search": t.values[0], "feasible": bool(t.user_attrs.get("feasible")),
                     "runtime": t.user_attrs.get("runtime"), "speedup": t.user_attrs.get("speedup"),
                     "validation": bench.quality(model, full=True)["quality"], "test": bench.test_quality(model)})
    base = {"validation": bench.quality(bench.model, full=True)["quality"], "test": bench.test_quality(bench.model)}
    feasible = [r for r in rows if r["feasible"]]
    best = max(feasible, key=lambda r: r["search"]) if feasible else None
    by_test = sorted(feasible, key=lambda r: -r["test"])
    return {
        "study": path, "trials": rows, "baseline": base,
        "spearman_all": spearman([r["search"] for r in rows], [r["test"] for r in rows]),
        "spearman_feasible": spearman([r["search"] for r in feasible], [r["test"] for r in feasible]),
        "best_trial": best and best["trial"], "best_test_rank": best and 1 + by_test.index(best),
        "feasible": len(feasible),
        "drop_validation": sum(base["validation"] - r["validation"] for r in rows) / len(rows),
        "drop_test": sum(base["test"] - r["test"] for r in rows) / len(rows),
    }


def report(results: dict, seconds: float) -> None:
    lines = ["# Selection on validation vs quality on test (quickstart studies)", "",
             "`python -m benchmarks.selection STUDY.yaml ...`: every finished trial rebuilt from its plan and scored as "
             "its runtime runs it, on the whole validation split (what the search selects on) and on data.test "
             "(STS-B dev, which nothing selected on). Spearman x100 for quality; rank correlations over trials.", "",
             "| study | trials (feasible) | rank corr. search vs test, all | feasible | mean loss on validation | "
             "mean loss on test | best feasible trial by search: its rank on test |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def num(x):
        return "-" if x is None else f"{x:.2f}"

    for r in results.values():
        lines.append(f"| {r['study']} | {len(r['trials'])} ({r['feasible']}) | {num(r['spearman_all'])} | "
                     f"{num(r['spearman_feasible'])} | {r['drop_validation']:.2f} | {r['drop_test']:.2f} | "
                     + ("-" if r["best_trial"] is None else f"trial {r['best_trial']}: {r['best_test_rank']} of "
                        f"{r['feasible']}") + " |")
    write_md(str(OUT), lines, f"{seconds / 60:.1f} min for the studies scored in the last call; "
             f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", help="study files whose storage holds a finished search")
    args = ap.parse_args()
    started = time.time()
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text()) if path.is_file() else {}

    def log(msg):
        print(f"[{time.time() - started:5.0f} s] {msg}", file=sys.stderr, flush=True)

    for study in args.studies:
        results[study] = score_study(study, log)
        path.write_text(json.dumps(results, indent=1))
    report(results, time.time() - started)


if __name__ == "__main__":
    main()
