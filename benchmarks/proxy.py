"""Proxy fidelity: does the search's cheap in-trial recovery rank plans the way `slimformer finish` would?

For the plans of one finished study (by default the 12 of highest search quality that compress
anything): each plan is finished as `slimformer finish` finishes it (searcher/finish.py's recipe,
`--steps` steps on the study's distillation corpus) and scored as its runtime runs it, on the
full validation split and on data.test. Then each plan is rebuilt with every in-trial recovery
variant (the plan as sampled, except its distillation steps) and scored on validation. Reported:
the Spearman rank correlation between each variant's quality and the finished quality (validation:
what a default may be chosen on; test: reported only), the build-and-score seconds per trial of
each variant, and where the plan that is best after finishing ranked in the search (what
`finish --top K` exists for). Resumes from its JSON (a plan or variant already measured is kept).

    python -m benchmarks.proxy runs/repeatability/seed0-finish/studies/quickstart.yaml [--plans 12] [--steps 300]
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
OUT = RESULTS / "proxy_results"
VARIANTS = (0, 30, 100)  # in-trial distillation steps on the calibration pairs (the quickstart samples 0 or 30)


def chosen_trials(study, n: int) -> list:
    """The `n` completed trials of highest search quality whose plan compresses something."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and "plan" in t.user_attrs
            and t.user_attrs.get("speedup") and t.values[0] is not None]
    done = [t for t in done if t.user_attrs.get("size_mb") != study.user_attrs.get("baseline", {}).get("size_mb")]
    return sorted(done, key=lambda t: -t.values[0])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="a study file whose storage holds a finished search")
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    started = time.time()

    def log(msg):
        print(f"[{time.time() - started:5.0f} s] {msg}", file=sys.stderr, flush=True)

    import optuna
    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.finish import check_corpus, final_plan
    from slimformer.searcher.problem.corpus import build_corpus
    from slimformer.searcher.problem.workbench import Workbench
    from slimformer.searcher.study.records import handle_for, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_study_config(args.study)
    study = open_study(handle_for(cfg, None, None), read_only=True)
    bench = Workbench(cfg, log=lambda msg: None)
    bench.adopt(study.user_attrs["baseline"])
    path = OUT.with_suffix(".json")
    res = json.loads(path.read_text()) if path.is_file() else {}
    if res.get("study") != args.study or res.get("steps") != args.steps:
        res = {"study": args.study, "steps": args.steps, "plans": {}}
    if "baseline" not in res:
        res["baseline"] = {"validation": bench.quality(bench.model, full=True)["quality"],
                           "test": bench.test_quality(bench.model)}
    corpus = build_corpus(check_corpus(cfg), bench.task, cfg.data.batch_size, seed=0)
    trials = chosen_trials(study, args.plans)
    for i, t in enumerate(trials):
        row = res["plans"].setdefault(str(t.number), {
            "trial": t.number, "search": t.values[0], "search_rank": i + 1, "speedup": t.user_attrs["speedup"],
            "feasible": bool(t.user_attrs.get("feasible")), "runtime": t.user_attrs.get("runtime"),
            "searched_steps": t.user_attrs["plan"]["distill"]["steps"], "variants": {}})
        runtime = t.user_attrs.get("runtime")
        if "finished" not in row:
            log(f"trial {t.number} ({i + 1}/{len(trials)}): finishing, {args.steps} steps ...")
            t0 = time.monotonic()
            model = bench.deployed(bench.build(final_plan(t.user_attrs["plan"], cfg.task.type, args.steps),
                                               corpus=corpus), runtime)
            row["finish_s"] = time.monotonic() - t0
            row["finished"] = {"validation": bench.quality(model, full=True)["quality"],
                               "test": bench.test_quality(model)}
            log(f"trial {t.number}: finished {row['finished']}")
            path.write_text(json.dumps(res, indent=1))
        for steps in VARIANTS:
            if str(steps) in row["variants"]:
                continue
            plan = Plan.from_dict(t.user_attrs["plan"])
            plan_dict = {**plan.to_dict(), "distill": {**plan.to_dict()["distill"], "steps": steps}}
            t0 = time.monotonic()
            model = bench.as_scored(plan_dict, runtime)
            quality = bench.quality(model)["quality"]
            row["variants"][str(steps)] = {"validation": quality, "seconds": time.monotonic() - t0}
            log(f"trial {t.number}: in-trial {steps} steps: {quality:.2f}")
            path.write_text(json.dumps(res, indent=1))
    res["load_average"] = list(os.getloadavg())
    path.write_text(json.dumps(res, indent=1))
    report(res, time.time() - started)


def summarise(res: dict) -> dict:
    rows = list(res["plans"].values())
    fin_val = [r["finished"]["validation"] for r in rows]
    fin_test = [r["finished"]["test"] for r in rows]
    searched_s = sum(r["variants"][str(r["searched_steps"])]["seconds"] for r in rows) / len(rows)
    out = {"as searched": {"validation": spearman([r["search"] for r in rows], fin_val),
                           "test": spearman([r["search"] for r in rows], fin_test), "seconds": searched_s},
           "finished validation (for reference)": {"validation": 1.0, "test": spearman(fin_val, fin_test),
                                                   "seconds": None}}
    for steps in VARIANTS:
        q = [r["variants"][str(steps)]["validation"] for r in rows]
        out[f"{steps} steps"] = {"validation": spearman(q, fin_val), "test": spearman(q, fin_test),
                                 "seconds": sum(r["variants"][str(steps)]["seconds"] for r in rows) / len(rows)}
    best = max(rows, key=lambda r: r["finished"]["validation"])
    best_test = max(rows, key=lambda r: r["finished"]["test"])
    return {"correlations": out, "best_after_finish": best["trial"], "its_search_rank": best["search_rank"],
            "best_on_test_after_finish": best_test["trial"], "its_search_rank_test": best_test["search_rank"]}


def report(res: dict, seconds: float) -> None:
    s = summarise(res)
    res["summary"] = s
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=1))
    b = res["baseline"]
    lines = ["# Proxy fidelity: in-trial recovery vs finished quality", "",
             f"`python -m benchmarks.proxy {res['study']} --steps {res['steps']}`: {len(res['plans'])} plans of one "
             f"quickstart study, each finished with `slimformer finish`'s recipe for {res['steps']} steps on the "
             "distillation corpus, and rebuilt with each in-trial recovery (its distillation steps on the 256 "
             "calibration pairs; everything else as sampled). Quality as its runtime runs it, Spearman x100: "
             "validation = the search's 500 STS-B train pairs, test = STS-B dev (reported only). "
             f"Uncompressed: {b['validation']:.2f} validation, {b['test']:.2f} test.", "",
             "| trial | search rank | speedup (search) | searched steps | search quality | "
             + " | ".join(f"in-trial {v} steps" for v in VARIANTS) + " | finished validation | finished test |",
             "|---:|---:|---:|---:|---:|" + "---:|" * len(VARIANTS) + "---:|---:|"]
    for r in sorted(res["plans"].values(), key=lambda r: r["search_rank"]):
        lines.append(f"| {r['trial']} | {r['search_rank']} | {r['speedup']:.2f}x | {r['searched_steps']} | "
                     f"{r['search']:.2f} | " + " | ".join(f"{r['variants'][str(v)]['validation']:.2f}" for v in VARIANTS)
                     + f" | {r['finished']['validation']:.2f} | {r['finished']['test']:.2f} |")
    lines += ["", "| in-trial recovery | rank corr. with finished validation | with finished test | "
              "build and score s per trial | rank corr. (validation) per s |", "|---|---:|---:|---:|---:|"]
    def num(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    for name, c in s["correlations"].items():
        per_s = None if c["seconds"] is None else c["validation"] / c["seconds"]
        lines.append(f"| {name} | {num(c['validation'])} | {num(c['test'])} | {num(c['seconds'], '{:.1f}')} | "
                     f"{num(per_s, '{:.4f}')} |")
    tests = [r["finished"]["test"] for r in res["plans"].values()]
    lines += ["", f"After finishing, test quality spans {min(tests):.2f} to {max(tests):.2f} "
              f"({min(tests) - b['test']:+.2f} to {max(tests) - b['test']:+.2f} against the uncompressed model)."]
    lines += ["", f"Best after finishing (validation): trial {s['best_after_finish']}, ranked "
              f"{s['its_search_rank']} of {len(res['plans'])} by the search; best after finishing on test: trial "
              f"{s['best_on_test_after_finish']}, ranked {s['its_search_rank_test']} by the search."]
    load = res.get("load_average", [float("nan")] * 3)
    write_md(str(OUT), lines, f"{seconds / 60:.1f} min in the last call; load average "
             f"{' / '.join(f'{x:.1f}' for x in load)} at the end (quality only: load slows it, changes no figure "
             "except the seconds).")


if __name__ == "__main__":
    main()
