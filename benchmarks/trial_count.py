"""Does the quickstart run enough trials? Its runs against one 60-trial reference search.

The target (issue 13): in at least 4 of 5 runs (seeds 0-4) the shipped quickstart finds a plan
within 0.5 point, on data.test (STS-B dev, which nothing selects on), of the plan one 60-trial run
(seed 0) finds, with its search still within 10 minutes on 2 cores.

1. The reference: `slimformer search studies/quickstart.yaml --seed 0 --trials 60` on a fresh copy
   of studies/ with an empty cache (as benchmarks/repeatability.py runs the quickstart), then
   `slimformer report --json --all`: the 5 best feasible trials re-timed, the front and the
   re-timed trials scored on test; then `slimformer finish` (its defaults) there, as the quickstart
   runs it, for what the user gets: the final model `export --best` would take.
2. The quickstart's runs: the runs of benchmarks/results/repeatability_results.json with the shipped
   settings (`--group`, the part of their key after the seed): each one's best under the budget
   (re-timed, the plan `finish` starts from) and its test quality, and the final model `export
   --best` took, from `slimformer report --json` in that run's folder.
3. Prefixes of the reference: for N trials, the best feasible trial among its first N (the
   search's own timing and its validation quality, no re-timing) and that plan's test quality
   (rebuilt and run as the search ran it): what more trials would have bought.

    python -m benchmarks.trial_count                 # the reference and the comparison (~40 min, quiet VM)
    python -m benchmarks.trial_count --report-only   # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, STUDY, fresh_copy, run_env, slimformer, write_md
from benchmarks.repeatability import row_setting, run_folder

OUT = RESULTS / "trial_count_results"
RUNS = ROOT / "runs" / "trial_count"
REPEATS = RESULTS / "repeatability_results.json"
PREFIXES = (8, 12, 16, 24, 32, 48, 60)
TOLERANCE = 0.5  # points of Spearman x100 on test


def _report(folder: Path, log: Path) -> dict:
    code, out = slimformer("report", STUDY, "--json", "--all", cwd=folder, env=run_env(folder), log=log)
    if code != 0:
        raise SystemExit(f"slimformer report failed in {folder} (exit {code}); see {log}")
    return json.loads(out)


def _best(rep: dict) -> dict | None:
    b = rep.get("best")  # a re-timed trial: the report scored it on test too
    return None if b is None else {"trial": b["number"], "quality": b["quality"], "test": b["quality_test"],
                                   "speedup": b["speedup"], "retimed": b["speedup_retimed"], "runtime": b["runtime"]}


def _final(rep: dict) -> dict | None:
    """The final model `export --best` takes: the best by validation that holds re-timed."""
    f = next((r for r in rep.get("final") or [] if r["holds"]), None)
    return None if f is None else {"trial": f["search_trial"], "quality": f["quality"], "test": f["test_quality"],
                                   "retimed": f["speedup_retimed"]}


def reference(trials: int) -> dict:
    folder = RUNS / f"reference-{trials}"
    env = fresh_copy(folder)
    log = folder / "log.txt"
    print(f"reference: {trials} trials, seed 0, in {folder} ...", flush=True)
    t0 = time.monotonic()
    code, _ = slimformer("search", STUDY, "--seed", 0, "--trials", trials, cwd=folder, env=env, log=log)
    wall = time.monotonic() - t0
    if code != 0:
        raise SystemExit(f"the reference search failed (exit {code}); see {log}")
    print("reference: finishing its best plans (slimformer finish, defaults) ...", flush=True)
    t0 = time.monotonic()
    code, _ = slimformer("finish", STUDY, cwd=folder, env=env, log=log)
    finish_wall = time.monotonic() - t0
    if code != 0:
        raise SystemExit(f"the reference's finish failed (exit {code}); see {log}")
    rep = _report(folder, log)
    return {"folder": str(folder.relative_to(ROOT)), "wall_s": wall, "finish_wall_s": finish_wall, "final": _final(rep), "n_trials": rep["n_trials"],
            "n_feasible": rep["n_feasible"], "best": _best(rep), "baseline_test": rep["baseline"].get("quality_test"),
            "trials": [{k: r[k] for k in ("number", "quality", "feasible", "speedup", "runtime", "plan")}
                       for r in rep["trials"]],
            "tests": {str(r["number"]): r["quality_test"] for r in rep["pareto"] + rep["retimed"]
                      if r.get("quality_test") is not None}}


def prefixes(ref: dict) -> dict:
    """The best feasible trial among the reference's first N, and its test quality (rebuilt)."""
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench

    tests = dict(ref["tests"])
    bench = None
    out = {}
    for n in PREFIXES:
        feasible = [t for t in ref["trials"] if t["number"] < n and t["feasible"]]
        if not feasible:
            out[str(n)] = None
            continue
        pick = max(feasible, key=lambda t: t["quality"])
        key = str(pick["number"])
        if key not in tests:
            if bench is None:
                bench = Workbench(load_study_config(str(ROOT / ref["folder"] / STUDY)), log=lambda msg: None)
            print(f"prefix {n}: scoring trial {key} on test ...", flush=True)
            model = bench.as_scored(pick["plan"], pick["runtime"])
            tests[key] = bench.test_quality(model)
        out[str(n)] = {"trial": pick["number"], "quality": pick["quality"], "speedup": pick["speedup"],
                       "test": tests[key]}
    return out


def runs(group: str) -> dict:
    """Each repeatability run of `group`: its search's best under the budget and its test quality."""
    rows = json.loads(REPEATS.read_text())
    out = {}
    for key, row in sorted(rows.items()):
        if row_setting(row) != group or row.get("search_exit") != 0:
            continue
        folder = run_folder(row["seed"], "finish_wall_s" in row, row.get("speedup_budget"), row.get("tag"))
        print(f"run {key}: reading its best under the budget ...", flush=True)
        rep = _report(folder, folder / "log.txt")
        out[key] = {"seed": row["seed"], "wall_s": row["wall_s"], "n_feasible": rep["n_feasible"],
                    "best": _best(rep), "final": _final(rep)}
    return out


def _gap(got: dict | None, ref: dict | None) -> tuple[str, bool]:
    if got is None or ref is None or got.get("test") is None or ref.get("test") is None:
        return "-", False
    gap = got["test"] - ref["test"]
    return f"{gap:+.2f}", gap >= -TOLERANCE


def render(results: dict, note: str) -> None:
    ref, group = results["reference"], results["group"]
    rb, rf = ref["best"], ref.get("final")
    lines = ["# Trials: the quickstart against a 60-trial reference run", "",
             "`python -m benchmarks.trial_count`: a 60-trial search of the quickstart (seed 0, fresh copy of "
             "`studies/`, empty cache) then `slimformer finish`, as the reference; the quickstart runs of "
             f"`repeatability_results.json` with the shipped settings (runs `<seed>{group}`). Quality = Spearman "
             "x100. A run's plan is its best trial under the budget (the best that held it when re-timed, what "
             "`finish` starts from), its final model the one `export --best` takes (the best finished model that "
             "holds re-timed); both judged on data.test (STS-B dev, 1,500 pairs), which nothing selected on. "
             f"Target: at least 4 of 5 runs within {TOLERANCE} point of the reference, search within 10 minutes.", ""]
    base = f" (uncompressed {ref['baseline_test']:.2f})" if ref.get("baseline_test") is not None else ""
    lines.append(f"- reference: {ref['n_trials']} trials in {ref['wall_s'] / 60:.1f} min, {ref['n_feasible']} "
                 "feasible; " + ("no trial held the budget re-timed" if rb is None else
                                 f"its plan: trial {rb['trial']}, {rb['quality']:.2f} validation, **{rb['test']:.2f} "
                                 f"test**{base}, {rb['speedup']:.2f}x in the search, {rb['retimed']:.2f}x re-timed "
                                 f"({rb['runtime']})"))
    if "finish_wall_s" in ref:
        lines.append(f"- reference finished in {ref['finish_wall_s'] / 60:.1f} min; " + (
            "no final model holds" if rf is None else
            f"its final model: of trial {rf['trial']}, {rf['quality']:.2f} validation, **{rf['test']:.2f} test**, "
            f"{rf['retimed']:.2f}x re-timed"))
    lines += ["", "| run | search time | feasible trials | plan | validation | test | vs the reference's plan | "
              "final model | test | vs the reference's final | within 0.5 |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    within, times = 0, []
    for key, r in results["runs"].items():
        b, f = r["best"], r.get("final")
        times.append(r["wall_s"])
        plan_gap, plan_ok = _gap(b, rb)
        final_gap, final_ok = _gap(f, rf)
        ok = plan_ok and (f is None or final_ok)
        within += ok
        lines.append(
            f"| {key} | {r['wall_s'] / 60:.1f} min | {r['n_feasible']} | "
            + ("none held | - | - | - | " if b is None else
               f"trial {b['trial']} ({b['retimed']:.2f}x re-timed) | {b['quality']:.2f} | {b['test']:.2f} | {plan_gap} | ")
            + ("- | - | - | " if f is None else f"of trial {f['trial']} ({f['retimed']:.2f}x) | {f['test']:.2f} | "
               f"{final_gap} | ") + ("yes" if ok else "no") + " |")
    if times:
        lines += ["", f"- **{within} of {len(results['runs'])} runs within {TOLERANCE} point of the reference** on "
                  "test, plan and final model (target: at least 4 of 5); search time: max "
                  f"{max(times) / 60:.1f} min (target: 10)"]
    lines += ["", "What more trials buy: the best feasible trial among the reference's first N (the search's own "
              "timing, no re-timing), scored on test.", "",
              "| first N trials | pick | validation | speedup in the search | test | vs the 60-trial pick |",
              "| ---: | --- | ---: | ---: | ---: | ---: |"]
    last = results["prefixes"].get(str(PREFIXES[-1]))
    for n, p in results["prefixes"].items():
        if p is None:
            lines.append(f"| {n} | none feasible | - | - | - | - |")
            continue
        lines.append(f"| {n} | trial {p['trial']} | {p['quality']:.2f} | {p['speedup']:.2f}x | {p['test']:.2f} | "
                     + ("-" if last is None else f"{p['test'] - last['test']:+.2f}") + " |")
    write_md(str(OUT), lines, note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60, help="the reference run's trials")
    ap.add_argument("--group", default="+finish@4x (finish lr 5e-4)",
                    help="the repeatability runs to compare: their key after the seed")
    ap.add_argument("--note", default="2-core VM, nothing else running")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text()) if path.is_file() else {}
    if not args.report_only:
        if "reference" not in results:
            results["reference"] = reference(args.trials)
            path.write_text(json.dumps(results, indent=1, sort_keys=True))
        results["group"] = args.group
        results["prefixes"] = prefixes(results["reference"])
        results["runs"] = runs(args.group)
        path.write_text(json.dumps(results, indent=1, sort_keys=True))
    render(results, args.note)


if __name__ == "__main__":
    main()
