"""What `slimformer finish` buys: all-MiniLM-L6-v2 on STS-B (the quickstart) and the SST-2 teacher,
three plans from mild to aggressive, test-split quality with the search's in-trial recovery and
after finishing, the finish time, and every model's speedup in the runtime that runs it fastest.

Studies and splits: benchmarks/common.py (test never chooses anything). Each plan is built
twice through the Workbench, as the search and as `finish` build it:
- in-trial: a search trial's recovery (Fisher importance, 30 distillation steps on the 256
  calibration examples: the quickstart's embedding loss at lr 2e-4; for SST-2 logits at 1e-4);
- finished: the same plan with `finish`'s finishing hyperparameters (searcher/finish.py FINISHING) for --steps steps
  on the distillation corpus, shuffled every epoch.
Then every model is timed in each of the study's runtimes (`device.runtime: auto`: eager PyTorch,
ONNX Runtime, OpenVINO) against the one baseline (the fastest stock float32 PyTorch setting) in
ONE interleaved measurement; each model's speedup is that of its fastest runtime (median of the
paired per-round ratios, with the 90% one-sided bootstrap bounds of searcher/devices/adaptive.py),
and its quality is scored on that runtime's artifact, as a trial and `finish` score it. Resumes
from its JSON (a finished model already trained at the same step count is reloaded; in-trial
builds and the timing are redone).

    python -m benchmarks.finish [--task stsb|sst2] [--steps 1000] [--rounds 40] [--out ...] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks.common import METRICS, RESULTS, ROOT, TEST_NAMES, import_all, study_path, write_md

HEADS_MILD, HEADS_HALF = [12, 12, 8, 8, 8, 12], [6, 6, 4, 4, 4, 6]  # per original layer, of 12
PLANS = {  # Fisher importance as in the quickstart; int8 = a real int8 kernel in every runtime
    "mild float32": {"heads": HEADS_MILD, "ffn": 768, "bits": 32, "importance": "fisher"},
    "mild int8": {"heads": HEADS_MILD, "ffn": 768, "bits": 8, "importance": "fisher"},
    "half int8": {"heads": HEADS_HALF, "ffn": 384, "bits": 8, "importance": "fisher"},
}
IN_TRIAL_STEPS = 30
IN_TRIAL = {"stsb": {"losses": ["embedding"], "lr": 2e-4}, "sst2": {"losses": ["logits"], "lr": 1e-4}}
CONFIDENCE = 0.9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("stsb", "sst2"), default="stsb")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--plans", default=",".join(PLANS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    out = args.out or str(RESULTS / ("finish_results" if args.task == "stsb" else "finish_sst2_results"))
    import_all()

    from slimformer.methods import Plan, load_compressed, save_compressed
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.finish import check_corpus, final_plan
    from slimformer.searcher.problem.corpus import build_corpus
    from slimformer.searcher.problem.workbench import Workbench

    study = study_path(args.task)
    cfg = load_study_config(study)
    path = Path(out + ".json")
    res = json.loads(path.read_text()) if path.is_file() else {"plans": {}}
    if args.report_only:
        return report(res, out)
    res["plans"] = {k: v for k, v in res["plans"].items() if k in PLANS}  # plans of an older version go
    res.update(task=args.task, steps=args.steps, study=str(study.relative_to(ROOT)))
    bench = Workbench(cfg, log=lambda m: None)
    rows = check_corpus(cfg)  # refuses a corpus that overlaps validation or test
    corpus = build_corpus(rows, bench.task, cfg.data.batch_size, seed=0)
    res["corpus_texts"] = len(corpus)
    path.write_text(json.dumps(res, indent=1))  # every stage is saved as it ends (the run resumes from it)
    models, plans = {}, {}
    for name in args.plans.split(","):
        spec = PLANS[name]
        trial_plan = Plan.from_dict({**spec, "distill": {"steps": IN_TRIAL_STEPS, **IN_TRIAL[args.task]}})
        t0 = time.monotonic()
        models[f"{name} | in-trial"] = bench.build(trial_plan)
        entry = res["plans"].get(name, {})
        entry.update(plan=spec, in_trial_build_s=time.monotonic() - t0)
        plans[f"{name} | in-trial"] = plans[f"{name} | finished"] = trial_plan
        if entry.get("steps") == args.steps and Path(entry.get("path", "")).is_dir():
            print(f"{name}: finished model kept from the last run", flush=True)
            models[f"{name} | finished"] = load_compressed(entry["path"])[0]
        else:
            t0 = time.monotonic()
            finished = bench.build(final_plan(trial_plan.to_dict(), cfg.task.type, args.steps), corpus=corpus,
                                   log=lambda m, name=name: print(f"  {name}: {m}", flush=True) if "distill step" in m else None)
            entry.update(steps=args.steps, finish_s=time.monotonic() - t0, load_average_15min=os.getloadavg()[2])
            folder = Path(out + "_models") / name.replace(" ", "-")  # not committed (.gitignore)
            save_compressed(finished, None, folder, tokenizer=bench.tokenizer, force=True)
            entry["path"] = str(folder)
            models[f"{name} | finished"] = finished
            print(f"{name}: finished in {entry['finish_s'] / 60:.1f} min", flush=True)
        res["plans"][name] = entry
        path.write_text(json.dumps(res, indent=1))
    runners = {(key, rt): bench.runner(model, rt) for key, model in models.items()
               for rt in bench.runtimes_for(plans[key])}
    res["timing"] = timing = time_all(bench, models, runners, args.rounds)
    res["baseline"] = {"validation": bench.quality(bench.model, full=True)["quality"],
                       "test": bench.test_quality(bench.model)}
    for key, model in models.items():
        name, kind = key.split(" | ")
        deployed = bench.as_run(model, runners[key, timing[key]["runtime"]])  # the artifact that was timed
        res["plans"][name][kind] = {"validation": bench.quality(deployed, full=True)["quality"],
                                    "test": bench.test_quality(deployed)}
        print(f"{key}: {res['plans'][name][kind]} at {timing[key]['speedup']:.2f}x ({timing[key]['runtime']})",
              flush=True)
    res["device"] = bench.facts()
    path.write_text(json.dumps(res, indent=1))
    report(res, out)


def time_all(bench, models: dict, runners: dict, rounds: int) -> dict:
    """Every (model, runtime) runner in one interleaved measurement against the baseline; per model:
    its fastest runtime, speedup (median of paired ratios), bounds, every runtime's speedup."""
    import statistics

    from slimformer.searcher.devices.adaptive import speedup_interval

    print(f"timing {len(runners)} runners against the baseline, {rounds} interleaved rounds ...", flush=True)
    load_before = os.getloadavg()[0]
    samples = bench.paired_runners({f"{k} @ {rt}": r for (k, rt), r in runners.items()})(rounds)
    base = samples["baseline"]
    out = {}
    for key in models:
        per_rt = {rt: [b / c for b, c in zip(base, samples[f"{key} @ {rt}"])]
                  for (k, rt) in runners if k == key}
        fastest = max(per_rt, key=lambda rt: statistics.median(per_rt[rt]))
        low, high = speedup_interval(per_rt[fastest], CONFIDENCE)
        out[key] = {"runtime": fastest, "speedup": statistics.median(per_rt[fastest]), "low": low, "high": high,
                    "by_runtime": {rt: statistics.median(r) for rt, r in per_rt.items()}}
    out["_conditions"] = {"rounds": rounds, "baseline_ms": statistics.median(base),
                          "load_average_1min": [load_before, os.getloadavg()[0]]}
    return out


def report(res: dict, out: str) -> None:
    task, b, t = res["task"], res["baseline"], res["timing"]
    cond = t["_conditions"]
    lines = [f"# Finishing: in-trial recovery vs `slimformer finish` ({task}, {METRICS[task]})", "",
             f"Command: `python -m benchmarks.finish --task {task} --steps {res['steps']} --rounds {cond['rounds']}`. "
             f"Study: {res['study']}. Test = {TEST_NAMES[task]}, never used to choose anything; distillation corpus: "
             f"{res['corpus_texts']:,} distinct texts.", "",
             f"Uncompressed: {b['test']:.2f} test, {b['validation']:.2f} validation; the baseline (stock float32 "
             f"PyTorch, {res['device'].get('attention')} attention) ran {cond['baseline_ms']:.1f} ms (a note: the "
             "ratios are the figures).", "",
             "| plan | recovery | test | vs uncompressed | validation | speedup [90% bounds] | runtime | time |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for name, e in res["plans"].items():
        for kind, label, secs in (("in-trial", f"in-trial: {IN_TRIAL_STEPS} steps on the calibration set",
                                   e["in_trial_build_s"]),
                                  ("finished", f"finish: {e['steps']} steps on the corpus", e["finish_s"])):
            tm, q = t[f"{name} | {kind}"], e[kind]
            lines.append(f"| {name} | {label} | {q['test']:.2f} | {q['test'] - b['test']:+.2f} | {q['validation']:.2f} "
                         f"| {tm['speedup']:.2f}x [{tm['low']:.2f}, {tm['high']:.2f}] | {tm['runtime']} "
                         f"| {secs / 60:.1f} min |")
    lines += ["", "Plans (heads and FFN per original layer, of 12 heads and 1,536 FFN neurons): " + "; ".join(
        f"{n}: heads {p['plan']['heads']}, FFN {p['plan']['ffn']}, {'int8' if p['plan']['bits'] == 8 else 'float32'}"
        for n, p in res["plans"].items()) + ".", "",
        "Speedup of each finished model in every runtime (same rounds): " + "; ".join(
            f"{n}: " + ", ".join(f"{rt} {s:.2f}x" for rt, s in t[f"{n} | finished"]["by_runtime"].items())
            for n in res["plans"]) + "."]
    loads = [e["load_average_15min"] for e in res["plans"].values()]
    d = res["device"]
    note = (f"{d.get('cpu')}, {d.get('threads')} threads, batch 1, {d.get('seq_len')} tokens; 1-minute load average "
            f"{cond['load_average_1min'][0]:.1f} before and {cond['load_average_1min'][1]:.1f} after the timing, "
            f"15-minute {min(loads):.1f}-{max(loads):.1f} at the end of each finish (above {d.get('threads')}, other "
            "work shared the cores: the minutes are inflated). All models and the baseline were timed in the same "
            "interleaved rounds with the 10 ms idle gap; time = build (in-trial) or build + distillation (finish).")
    write_md(out, lines, note)


if __name__ == "__main__":
    main()
