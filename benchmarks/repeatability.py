"""Does the quickstart give the same answer twice, and does the answer hold its budget?

For each seed: a fresh copy of studies/ (and an empty SLIMFORMER_CACHE: no device profile, as
for a new user), `slimformer search studies/quickstart.yaml --seed N` as shipped (wall time),
with `--finish` then `slimformer finish` with its defaults (wall time), `slimformer export --best`
in its default format (the runtime the trial was fastest in), then in a FRESH process the exported
artifact itself (the ONNX or OpenVINO file, or the pytorch layout) is loaded and timed against the
study's baseline (60 interleaved rounds; speedup = median of the paired ratios, one-sided bootstrap
bounds at budget.confidence, searcher/devices/adaptive.py) and scored on the full validation split
and on data.test.

Resumable: results are kept in repeatability_results.json by run ("0" = seed 0 searched,
"0+finish" = seed 0 searched and finished, "0+finish@3.5x" = the same with the copy's budget.speedup
set to 3.5 instead of the shipped value; `--tag T` adds " (T)"); a run already there is skipped, so more can be added
later (`--seeds 2 3 4`).

    python -m benchmarks.repeatability --seeds 0 1 2 3 4
    python -m benchmarks.repeatability --seeds 0 --finish
    python -m benchmarks.repeatability --seeds 0 --finish --speedup 3.5   # the copy's budget.speedup set to 3.5
    python -m benchmarks.repeatability --report-only        # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, STUDY, fresh_copy, slimformer, write_md

OUT = RESULTS / "repeatability_results"
RUNS = ROOT / "runs" / "repeatability"


def run_folder(seed: int, finish: bool, speedup: float | None = None, tag: str | None = None) -> Path:
    """Where a run lives (its copy of studies/, cache, log and export)."""
    return RUNS / (f"seed{seed}" + ("-finish" if finish else "") + (f"-{speedup:g}x" if speedup else "")
                   + (f"-{tag}" if tag else ""))


def measure(artifact: str, study: str, rounds: int) -> dict:
    """In this (fresh) process: the exported artifact against the study's baseline."""
    from slimformer.methods import load_compressed
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.devices.adaptive import speedup_interval
    from slimformer.searcher.devices.artifacts import ArtifactModel, is_artifact, open_artifact
    from slimformer.searcher.devices.runtime import ArtifactRunner
    from slimformer.searcher.problem.workbench import Workbench
    from slimformer.searcher.study.budget import Budget

    cfg = load_study_config(study)
    bench = Workbench(cfg, log=lambda msg: None)
    folder = Path(artifact)
    if is_artifact(folder):  # the runtime's own file, as a user runs it
        manifest, session = open_artifact(folder, cfg.device.threads)
        model = ArtifactModel(session, bench.model.config)
        runner, fmt = ArtifactRunner(session, bench.inputs), manifest["format"]
    else:
        model = load_compressed(artifact)[0]
        runner, fmt = bench.runner(model, None), "pytorch"
    samples = bench.paired_runners({"candidate": runner})(rounds)
    ratios = [b / c for b, c in zip(samples["baseline"], samples["candidate"])]
    low, high = speedup_interval(ratios, cfg.budget.confidence)
    base_ms = statistics.median(samples["baseline"])
    budget = Budget.from_section(cfg.budget)
    return {
        "speedup": statistics.median(ratios), "low": low, "high": high, "confidence": cfg.budget.confidence,
        "rounds": rounds, "target": budget.target(base_ms), "holds": budget.holds(low, base_ms),
        "baseline_ms": base_ms, "candidate_ms": statistics.median(samples["candidate"]),
        "quality_full": bench.quality(model, full=True)["quality"],
        "baseline_quality_full": bench.quality(bench.model, full=True)["quality"],
        "quality_test": bench.test_quality(model),  # None without data.test
        "baseline_quality_test": bench.test_quality(bench.model),
        "format": fmt, "baseline_setting": bench.baseline_facts(),
    }


def run_seed(seed: int, rounds: int, finish: bool, speedup: float | None = None, tag: str | None = None) -> dict:
    folder = run_folder(seed, finish, speedup, tag)
    env = fresh_copy(folder, speedup)
    log = folder / "log.txt"
    print(f"seed {seed}: searching in {folder} ...", flush=True)
    t0 = time.monotonic()
    code, out = slimformer("search", STUDY, "--seed", seed, cwd=folder, env=env, log=log)
    wall = time.monotonic() - t0
    row = {"seed": seed, "wall_s": wall, "search_exit": code, "search_summary": out.strip().splitlines()[:3],
           **({"speedup_budget": speedup} if speedup else {}), **({"tag": tag} if tag else {})}
    if code != 0:
        return row
    if finish:
        print(f"seed {seed}: finishing the best plans (slimformer finish, defaults) ...", flush=True)
        t0 = time.monotonic()
        code, out = slimformer("finish", STUDY, cwd=folder, env=env, log=log)
        row.update(finish_wall_s=time.monotonic() - t0, finish_exit=code, finish_summary=out.strip().splitlines())
        if code != 0:
            return row
    code, out = slimformer("export", STUDY, "--best", "--out", "exported", cwd=folder, env=env, log=log)
    row["export_exit"] = code
    if code != 0:
        row["export_error"] = log.read_text().strip().splitlines()[-1]
        return row
    from slimformer.methods.export import MANIFEST, META

    exported = folder / "exported"
    metrics = (json.loads((exported / META).read_text())["metrics"] if (exported / META).is_file()
               else json.loads((exported / MANIFEST).read_text())["trial"])
    final = "final_of_trial" in metrics  # the final model of a search trial (slimformer finish)
    row.update(trial=metrics["final_of_trial"] if final else metrics["trial"], final=final,
               steps=metrics.get("steps"), quality_search=metrics["quality"], speedup_search=metrics["speedup"],
               search_low=metrics.get("speedup_low"), retimed=metrics.get("retimed"))
    print(f"seed {seed}: exported trial {row['trial']}; re-measuring it in a fresh process ...", flush=True)
    res = subprocess.run([sys.executable, "-m", "benchmarks.repeatability", "--measure", str(folder / "exported"),
                          str(folder / STUDY), "--rounds", str(rounds)], capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        row["measure_error"] = res.stderr.strip().splitlines()[-1]
        return row
    row["fresh"] = json.loads(res.stdout)
    return row


def setting(finish: bool, speedup: float | None = None, tag: str | None = None) -> str:
    """What a run ran, in its key after the seed ("+finish@4x (T)"): runs of one setting are compared."""
    return ("+finish" if finish else "") + (f"@{speedup:g}x" if speedup else "") + (f" ({tag})" if tag else "")


def run_key(seed: int, finish: bool, speedup: float | None = None, tag: str | None = None) -> str:
    return f"{seed}{setting(finish, speedup, tag)}"


def row_setting(row: dict) -> str:
    """The setting of a stored run (its search ran, so finish_wall_s says whether it was finished)."""
    return setting("finish_wall_s" in row, row.get("speedup_budget"), row.get("tag"))


def report(results: dict, note: str) -> None:
    rows = [results[k] for k in sorted(results, key=lambda k: (int(k.split("+")[0]), k))]
    lines = ["# Repeatability of the quickstart", "",
             "`python -m benchmarks.repeatability --seeds ... [--finish]`: the quickstart "
             "(`studies/quickstart.yaml`, as shipped) from a fresh copy of `studies/` per run, with `--finish` "
             "then `slimformer finish` (its defaults), `export --best` in its default format, and the exported "
             "artifact itself re-measured in a fresh process (speedup vs the study's baseline, stock float32 "
             "PyTorch, in interleaved rounds, one-sided bootstrap bounds; quality on the whole validation split "
             "and on data.test, which nothing selected on).", "",
             "| run | budget | search time | finish time | exported | format | validation (search) | full validation | "
             "test (change) | speedup in the search | re-timed | fresh process [low, high] | holds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    held, searched = [], []
    for r in rows:
        run = f"{r['seed']}{row_setting(r)}"
        fin = f"{r['finish_wall_s'] / 60:.1f} min" if "finish_wall_s" in r else "-"
        f = r.get("fresh")
        if f is None:
            why = (r.get("export_error") or r.get("measure_error") or
                   (f"finish exit {r['finish_exit']}" if r.get("finish_exit") else f"search exit {r.get('search_exit')}"))
            lines.append(f"| {run} | - | {r['wall_s'] / 60:.1f} min | {fin} | - | - | - | - | - | - | - | {why} | no |")
            held.append(False)
            continue
        again = r.get("retimed") or {}
        what = (f"final model of trial {r['trial']} ({r['steps']} steps)" if r.get("final") else f"trial {r['trial']}")
        test = "-" if f.get("quality_test") is None else (
            f"{f['quality_test']:.2f} ({f['quality_test'] - f['baseline_quality_test']:+.2f})")
        lines.append(
            f"| {run} | {'-' if f['target'] is None else format(f['target'], 'g') + 'x'} | {r['wall_s'] / 60:.1f} min | "
            f"{fin} | {what} | {f.get('format', 'pytorch')} | "
            f"{'-' if r.get('final') else round(r['quality_search'], 2)} | {f['quality_full']:.2f} | {test} | "
            f"{'-' if r['speedup_search'] is None else format(r['speedup_search'], '.2f') + 'x'} | "
            + (f"{again['speedup']:.2f}x [{again['low']:.2f}, {again['high']:.2f}]" if again else "-")
            + f" | {f['speedup']:.2f}x [{f['low']:.2f}, {f['high']:.2f}] | {'yes' if f['holds'] else 'no'} |")
        held.append(f["holds"])
        searched.append(r["wall_s"])
    lines.append("")
    fresh = [r["fresh"] for r in rows if r.get("fresh")]
    if rows:
        conf = fresh[0]["confidence"] if fresh else 0.9
        exported = sum(r.get("export_exit") == 0 for r in rows)
        lines.append(f"- runs: {len(rows)}; `export --best` exported a model in {exported} (it refuses when no "
                     f"re-timed trial holds); exported bests that hold the budget in the fresh process "
                     f"(one-sided {conf:.0%} lower bound >= target): {sum(held)} of {exported}")
        if fresh:
            lines.append(f"- uncompressed: {fresh[0]['baseline_quality_full']:.2f} full validation"
                         + ("" if fresh[0].get("baseline_quality_test") is None
                            else f", {fresh[0]['baseline_quality_test']:.2f} test")
                         + (f"; the baseline: stock float32 PyTorch with {fresh[0]['baseline_setting']['attention']} "
                            "attention (the faster of sdpa and eager here)" if fresh[0].get("baseline_setting") else ""))
        by_setting: dict[str, list[dict]] = {}
        for r in rows:
            by_setting.setdefault(row_setting(r), []).append(r)
        for name, group in by_setting.items():  # quality spreads: only across runs of one setting
            got = [r["fresh"] for r in group if r.get("fresh")]
            if len(got) < 2:
                continue
            tests, fulls = [f["quality_test"] for f in got], [f["quality_full"] for f in got]
            lines.append(
                f"- runs `<seed>{name}` (seeds {', '.join(str(r['seed']) for r in group)}): exported {len(got)} of "
                f"{len(group)}, {sum(f['holds'] for f in got)} hold the budget in the fresh process; "
                + ("" if None in tests else f"test quality {min(tests):.2f} to {max(tests):.2f}, **spread "
                   f"{max(tests) - min(tests):.2f} points** (target: at most 0.5); ")
                + f"full-validation spread {max(fulls) - min(fulls):.2f}; search time median "
                f"{statistics.median(r['wall_s'] for r in group) / 60:.1f} min, max "
                f"{max(r['wall_s'] for r in group) / 60:.1f} min")
        lines.append(f"- search wall time per run: median {statistics.median(r['wall_s'] for r in rows) / 60:.1f} min")
    write_md(str(OUT), lines, note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds of the fresh-process timing")
    ap.add_argument("--finish", action="store_true", help="run `slimformer finish` (defaults) before exporting")
    ap.add_argument("--speedup", type=float, help="budget.speedup of the copied quickstart (default: as shipped)")
    ap.add_argument("--tag", help="a label for the run's key and folder (e.g. what changed since the last run)")
    ap.add_argument("--note", default="2-core VM, nothing else running")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--measure", nargs=2, metavar=("ARTIFACT", "STUDY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.rounds)))
        return
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text()) if path.is_file() else {}
    for seed in [] if args.report_only else args.seeds:
        key = run_key(seed, args.finish, args.speedup, args.tag)
        if key in results:
            print(f"run {key}: already in {path.name}, skipped")
            continue
        row = run_seed(seed, args.rounds, args.finish, args.speedup, args.tag)
        # re-read before writing: another instance may have added its runs meanwhile
        results = {**(json.loads(path.read_text()) if path.is_file() else {}), key: row}
        path.write_text(json.dumps(results, indent=1, sort_keys=True))
        report(results, args.note)
    report(results, args.note)


if __name__ == "__main__":
    main()
