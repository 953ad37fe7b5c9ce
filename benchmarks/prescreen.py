"""Time saved by cost-model screening: the same study run with and without rejecting candidates
the calibrated cost model predicts clearly over the latency budget.

    python -m benchmarks.prescreen                       # studies/minilm-2x.yaml, 60 trials each
    python -m benchmarks.prescreen --trials 30 --together

Each study runs as `slimformer search` in its own process on a copy of studies/ with an empty
storage; needs this device's profile (`slimformer profile --threads 2`). Reported per study:
wall time, CPU time of the process (less sensitive than wall time to other work on the
machine), candidates built and measured, candidates rejected before building, and the best
plan under the budget (search split, then re-scored on the full dev split by `report`).
`--together` runs both studies at the same time so that both see the same machine load.
Writes benchmarks/results/prescreen_results.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, load_sqlite_study, write_md

ROOT = Path(__file__).resolve().parents[1]


def _start(folder: Path, study: Path, trials: int) -> tuple[subprocess.Popen, float]:
    log = open(folder / "search.log", "w")  # noqa: SIM115 - closed by the caller's process exit
    cmd = [sys.executable, "-m", "slimformer.searcher.cli", "search", str(study), "--trials", str(trials)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder), time.perf_counter()


def _wait(proc: subprocess.Popen, t0: float) -> dict:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime, "rc": proc.returncode}


def _summary(folder: Path, study: Path) -> dict:
    rep = subprocess.run([sys.executable, "-m", "slimformer.searcher.cli", "report", str(study), "--json"],
                         capture_output=True, text=True, cwd=folder, check=True)
    data = json.loads(rep.stdout)
    best = data["best"]
    return {"n_measured": data["n_complete"], "n_rejected": data["n_rejected"], "n_failed": data["n_failed"],
            "best": None if best is None else {k: best.get(k) for k in ("number", "quality", "quality_full",
                                                                        "speedup", "size_mb")},
            "baseline": data["baseline"], "cost_model": data["cost_model"]}


def _trajectory(folder: Path, study: Path) -> list[tuple[float, float]]:
    """(minutes since the study's first trial started, best feasible quality so far) per measured trial."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = load_sqlite_study(folder / (study.stem + '.db'), study.stem)
    trials = st.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    best, out = float("-inf"), []
    for t in sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete):
        if t.user_attrs.get("feasible"):
            best = max(best, t.user_attrs["quality"])
        out.append(((t.datetime_complete - start).total_seconds() / 60, best))
    return out


def _time_to(traj: list[tuple[float, float]], quality: float) -> float | None:
    return next((m for m, q in traj if q >= quality), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "minilm-2x.yaml"))
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--together", action="store_true", help="run both studies at the same time")
    ap.add_argument("--note", default="", help="a line about the conditions of the run")
    ap.add_argument("--out", default=str(RESULTS / "prescreen_results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slimformer-prescreen-"))
    studies = {}
    for screen in (True, False):
        folder = work / ("with" if screen else "without")
        shutil.copytree(ROOT / "studies", folder)
        spec = yaml.safe_load(Path(args.study).read_text())
        spec.setdefault("search", {})["prescreen"] = screen
        path = folder / Path(args.study).name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        studies[screen] = (folder, path)
    results = {}
    if args.together:
        running = {s: _start(f, p, args.trials) for s, (f, p) in studies.items()}
        for s, (proc, t0) in running.items():
            results[s] = _wait(proc, t0)
    else:
        for s, (f, p) in studies.items():
            results[s] = _wait(*_start(f, p, args.trials))
    for s, (f, p) in studies.items():
        if results[s]["rc"] != 0:
            raise SystemExit(f"search failed, see {f / 'search.log'}")
        results[s].update(_summary(f, p))
        results[s]["trajectory"] = _trajectory(f, p)
    out = {"study": Path(args.study).name, "trials": args.trials, "together": args.together, "note": args.note,
           "with_prescreen": results[True], "without_prescreen": results[False]}
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    lines = [f"# Cost-model screening: time saved ({out['study']}, {args.trials} finished trials each)", "",
             "Command: `python -m benchmarks.prescreen" + (" --together" if args.together else "") + "`", "",
             "| screening | wall time | CPU time | built and measured | rejected before building | "
             "best under the budget (search split / full dev) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for s, label in ((True, "on"), (False, "off")):
        r = results[s]
        b = r["best"]
        best = "none" if b is None else (f"trial {b['number']}: {b['quality']:.2f} / "
                                         f"{b['quality_full']:.2f} at {b['speedup']:.2f}x")
        lines.append(f"| {label} | {r['wall_s'] / 60:.1f} min | {r['cpu_s'] / 60:.1f} min | {r['n_measured']} | "
                     f"{r['n_rejected']} | {best} |")
    target = max(q for _, q in results[False]["trajectory"])
    t_on, t_off = _time_to(results[True]["trajectory"], target), _time_to(results[False]["trajectory"], target)
    out["time_to_unscreened_best_min"] = {"on": t_on, "off": t_off}
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    lines += ["", f"Time to reach the unscreened study's best feasible quality ({target:.2f}, search split): "
              f"with screening {'never' if t_on is None else f'{t_on:.1f} min'}, without {t_off:.1f} min."]
    cm = results[True]["cost_model"]
    if cm.get("mape") is not None:
        lines += ["", f"Cost model over the screened study's measured trials: MAPE {cm['mape']:.1f}%, "
                  f"Spearman {cm['spearman']:.3f}, n={cm['n']}."]
    write_md(args.out, lines, args.note)


if __name__ == "__main__":
    main()
