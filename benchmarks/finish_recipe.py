"""Which recovery recipe `slimformer finish` uses, per task family, chosen by measurement (issue 16,
item 4): losses, learning rate, batch size and dropout compared on one aggressive plan.

The plan (heads 6,6,4,4,4,6 of 12; FFN 384 of 1536; int8; Fisher importance on the 256
calibration examples) is rebuilt once per recipe and distilled for --steps steps from the
uncompressed model on the study's distillation corpus (benchmarks/common.py: STS-B for
sentence similarity, SST-2 with the fine-tuned teacher for classification). Every recipe sees
the same corpus order. The recipe is chosen on the validation split; the test split is only
reported. Quality is scored on the PyTorch model (int8 layers on PyTorch's kernel): a
comparison of recipes, not of runtimes. Resumes from its JSON (a recipe measured at the same
step count is kept).

    python -m benchmarks.finish_recipe --task stsb|sst2 [--steps 300] [--variants "A;B"] [--out ...]

`--variants` (names separated by ";") runs only those recipes, e.g. the best two again at
`finish`'s default step count; each (recipe, steps) pair is one row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import FAMILIES, METRICS, RESULTS, ROOT, TEST_NAMES, import_all, study_path, write_md

PLAN = {"heads": [6, 6, 4, 4, 4, 6], "ffn": 384, "bits": 8, "importance": "fisher"}
# distillation settings compared per task; the first is the recipe `finish` used before this comparison
VARIANTS = {
    "stsb": {
        "embedding, lr 2e-4": {"losses": ["embedding"], "lr": 2e-4},
        "embedding, lr 1e-4": {"losses": ["embedding"], "lr": 1e-4},
        "embedding, lr 5e-4": {"losses": ["embedding"], "lr": 5e-4},
        "embedding + hidden, lr 2e-4": {"losses": ["embedding", "hidden"], "lr": 2e-4},
        "embedding + attention, lr 2e-4": {"losses": ["embedding", "attention"], "lr": 2e-4},
        "embedding + hidden + attention, lr 2e-4": {"losses": ["embedding", "hidden", "attention"], "lr": 2e-4},
        "embedding, lr 2e-4, dropout on": {"losses": ["embedding"], "lr": 2e-4, "dropout": True},
        "embedding, lr 2e-4, batch 16": {"losses": ["embedding"], "lr": 2e-4, "batch_size": 16},
    },
    "sst2": {
        "logits, lr 1e-4": {"losses": ["logits"], "lr": 1e-4},
        "logits, lr 3e-4": {"losses": ["logits"], "lr": 3e-4},
        "logits + hidden, lr 1e-4": {"losses": ["logits", "hidden"], "lr": 1e-4},
        "logits + hidden + attention, lr 1e-4": {"losses": ["logits", "hidden", "attention"], "lr": 1e-4},
        "logits, lr 1e-4, dropout on": {"losses": ["logits"], "lr": 1e-4, "dropout": True},
        "logits, lr 1e-4, batch 16": {"losses": ["logits"], "lr": 1e-4, "batch_size": 16},
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(VARIANTS), default="stsb")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--variants", default=None, help="only these recipes, separated by ';'")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    out = args.out or str(RESULTS / f"finish_recipe_{args.task}_results")
    import_all()
    if args.report_only:
        return report(json.loads(Path(out + ".json").read_text()), out)

    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.finish import check_corpus
    from slimformer.searcher.problem.corpus import build_corpus
    from slimformer.searcher.problem.workbench import Workbench

    cfg = load_study_config(study_path(args.task))
    path = Path(out + ".json")
    res = json.loads(path.read_text()) if path.is_file() else {"variants": {}}
    res["variants"] = {row_key(k.split(" | ")[0], e["steps"]): e for k, e in res["variants"].items()}
    names = args.variants.split(";") if args.variants else list(VARIANTS[args.task])
    unknown = [n for n in names if n not in VARIANTS[args.task]]
    if unknown:
        sys.exit(f"unknown recipe(s) {unknown}; known: {list(VARIANTS[args.task])}")
    res.update(task=args.task, study=str(study_path(args.task).relative_to(ROOT)), plan=PLAN)
    bench = Workbench(cfg, log=lambda m: None)
    rows = check_corpus(cfg)  # refuses a corpus that overlaps validation or test
    if "baseline" not in res:
        res["baseline"] = {"validation": bench.quality(bench.model, full=True)["quality"],
                           "test": bench.test_quality(bench.model)}
    res["corpus_rows"] = len(rows)
    path.write_text(json.dumps(res, indent=1))
    corpora = {}
    for name in names:
        variant, key = VARIANTS[args.task][name], row_key(name, args.steps)
        if key in res["variants"]:
            print(f"{key}: measured already (kept)", flush=True)
            continue
        spec = dict(variant)
        batch = spec.pop("batch_size", cfg.data.batch_size)
        if batch not in corpora:
            corpora[batch] = build_corpus(rows, bench.task, batch, seed=0)
        plan = Plan.from_dict({**PLAN, "distill": {"steps": args.steps, **spec}})
        t0 = time.monotonic()
        model = bench.build(plan, corpus=corpora[batch])
        secs = time.monotonic() - t0
        entry = {"distill": variant, "steps": args.steps, "batch_size": batch, "build_s": secs,
                 "load_average_15min": os.getloadavg()[2],
                 "validation": bench.quality(model, full=True)["quality"], "test": bench.test_quality(model)}
        res["variants"][key] = entry
        print(f"{key}: validation {entry['validation']:.2f}, test {entry['test']:.2f} ({secs / 60:.1f} min)", flush=True)
        path.write_text(json.dumps(res, indent=1))
    report(res, out)


def row_key(name: str, steps: int) -> str:
    return f"{name} | {steps}"


def chosen(res: dict, steps: int) -> str:
    """The recipe with the best validation quality at `steps` steps (test is never looked at to choose)."""
    rows = [k for k, e in res["variants"].items() if e["steps"] == steps]
    return max(rows, key=lambda k: res["variants"][k]["validation"])


def report(res: dict, out: str) -> None:
    task, b = res["task"], res["baseline"]
    steps = sorted({e["steps"] for e in res["variants"].values()})
    best = {chosen(res, n) for n in steps}
    lines = [f"# Finishing recipe comparison: {task} ({METRICS[task]})", "",
             f"Command: `python -m benchmarks.finish_recipe --task {task} --steps {steps[0]}`{''.join(f' (and `--steps {n} --variants ...`)' for n in steps[1:])}. "
             f"Study: {res['study']}; plan: heads {res['plan']['heads']}, FFN {res['plan']['ffn']}, int8, Fisher. "
             f"Test = {TEST_NAMES[task]}, only reported; the recipe is chosen on validation. Corpus: "
             f"{res['corpus_rows']:,} rows.", "",
             f"Uncompressed: {b['validation']:.2f} validation, {b['test']:.2f} test.", "",
             "| recipe | steps | validation | test | test vs uncompressed | build + distil time |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, e in sorted(res["variants"].items(), key=lambda kv: (kv[1]["steps"], -kv[1]["validation"])):
        mark = " (best on validation)" if key in best else ""
        lines.append(f"| {key.split(' | ')[0]}{mark} | {e['steps']} | {e['validation']:.2f} | {e['test']:.2f} "
                     f"| {e['test'] - b['test']:+.2f} | {e['build_s'] / 60:.1f} min |")
    from slimformer.searcher.finish import DEFAULT_STEPS, FINISHING
    family = FAMILIES[task]
    lines += ["", f"Decision: `slimformer finish` uses, for {family}, the recipe best on validation at the largest "
              f"step count measured ({steps[-1]:,}; finish's default is {DEFAULT_STEPS:,}): "
              f"{chosen(res, steps[-1]).split(' | ')[0]}. searcher/finish.py FINISHING now holds losses "
              f"{list(FINISHING[family]['losses'])} at lr {FINISHING[family]['lr']:g}."]
    loads = [e["load_average_15min"] for e in res["variants"].values()]
    note = (f"2 threads; 15-minute load average {min(loads):.1f}-{max(loads):.1f} on 2 cores at the end of each "
            "recipe (above 2, other work shared the cores and the minutes are inflated; quality is unaffected). "
            "All recipes: 10% warm-up then linear decay, AdamW, embeddings frozen, the same seeded corpus order; "
            "batch 32 unless named. The first recipe's time also holds the Fisher scores and the teacher's pass over "
            "the corpus, which the others reuse.")
    write_md(out, lines, note)


if __name__ == "__main__":
    main()
