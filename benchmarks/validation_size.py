"""How large must the search's validation split be for its ranking of plans to hold on test?

For one finished quickstart study: every finished trial is rebuilt from its plan and run as its
runtime runs it (the artifact that was timed); its cosine similarity is stored for every pair of
a pool of STS-B train pairs (the 500 of data.validation plus --pool more from the calibration
file, none of the 256 calibration pairs the trials trained on) and of data.test (STS-B dev).
Then, for validation splits of n pairs drawn from the pool (--draws random draws per n), the
trials are ranked by Spearman on the draw, and reported: the rank correlation of that ranking with
test over the feasible trials, and the regret (test quality of the best feasible trial on test
minus that of the draw's pick). For the noise floor without any shift of distribution, the same
for n pairs drawn from test, judged on the rest of test. Per-pair similarities are cached in
runs/validation_size/ (the script resumes per trial); the figures go to validation_size_results.
What a size costs: the seconds one trial spends scoring n pool pairs (the best feasible trial, as
its runtime runs it; median of 3), the part of a trial's time that grows with the split.

    python -m benchmarks.validation_size runs/repeatability/seed0-finish/studies/quickstart.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import RESULTS, write_md  # noqa: E402
from benchmarks.common import spearman as rank_corr  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = RESULTS / "validation_size_results"
CACHE = HERE.parent / "runs" / "validation_size"
SIZES = (250, 500, 1000, 2000)


def pool_rows(cfg, extra: int) -> tuple[dict[str, list], dict[str, list]]:
    """(data.validation's rows, `extra` calibration-file rows that are not calibration pairs)."""
    from slimformer.searcher.problem.workbench import study_rows

    def as_dict(ds) -> dict[str, list]:
        return {k: list(ds[k]) for k in ("sentence1", "sentence2", "score")}

    val = as_dict(study_rows(cfg, "validation"))
    used = as_dict(study_rows(cfg, "calibration", cfg.data.calibration_size))
    seen = set(zip(used["sentence1"], used["sentence2"]))
    rest = as_dict(study_rows(cfg, "calibration"))
    keep = [i for i, p in enumerate(zip(rest["sentence1"], rest["sentence2"])) if p not in seen]
    pick = sorted(np.random.default_rng(1).choice(keep, size=min(extra, len(keep)), replace=False).tolist())
    return val, {k: [rest[k][i] for i in pick] for k in val}


def similarities(bench, model, rows: dict[str, list]) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity per pair, gold score per pair), in the task's batch order."""
    import torch
    import torch.nn.functional as F

    sims, gold = [], []
    with torch.inference_mode():
        for b in bench.task.prepare(rows):
            sims.append(F.cosine_similarity(bench.task.embed(model, b["a"]), bench.task.embed(model, b["b"])).numpy())
            gold.append(b["score"].numpy())
    return np.concatenate(sims), np.concatenate(gold)


def rho(sims: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(sims, gold).statistic * 100)


def collect(path: str, extra: int, log) -> dict:
    import optuna
    from optuna.trial import TrialState
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench, study_rows
    from slimformer.searcher.study.records import handle_for, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_study_config(path)
    study = open_study(handle_for(cfg, None, None), read_only=True)
    bench = Workbench(cfg, log=lambda msg: None)
    bench.adopt(study.user_attrs["baseline"])
    val, more = pool_rows(cfg, extra)
    test = {k: list(study_rows(cfg, "test")[k]) for k in ("sentence1", "sentence2", "score")}
    CACHE.mkdir(parents=True, exist_ok=True)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and "plan" in t.user_attrs]
    out = {}
    for i, t in enumerate(done):
        file = CACHE / f"trial-{t.number}.npz"
        if not file.is_file():
            log(f"trial {t.number} ({i + 1}/{len(done)}): rebuilding and scoring {len(val['score'])} + "
                f"{len(more['score'])} + {len(test['score'])} pairs ...")
            model = bench.as_scored(t.user_attrs["plan"], t.user_attrs.get("runtime"))
            # the pool: data.validation's pairs first (the task's batch order within each part)
            ps, pg = (np.concatenate(x) for x in zip(similarities(bench, model, val), similarities(bench, model, more)))
            ts, tg = similarities(bench, model, test)
            np.savez(file, pool=ps, pool_gold=pg, test=ts, test_gold=tg)
        z = np.load(file)
        out[t.number] = {"pool": z["pool"], "pool_gold": z["pool_gold"], "test": z["test"], "test_gold": z["test_gold"],
                         "feasible": bool(t.user_attrs.get("feasible")), "search": t.values[0]}
    return out


def scoring_cost(path: str, extra: int, log) -> dict[int, float]:
    """Seconds to score n pool pairs, per size, with the best feasible trial as deployed (median of 3)."""
    import statistics

    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench
    from slimformer.searcher.study.records import best_feasible, handle_for, open_study

    cfg = load_study_config(path)
    study = open_study(handle_for(cfg, None, None), read_only=True)
    best = best_feasible(study)
    bench = Workbench(cfg, log=lambda msg: None)
    log(f"trial {best.number}: timing the scoring of {', '.join(map(str, SIZES))} pairs ...")
    model = bench.as_scored(best.user_attrs["plan"], best.user_attrs.get("runtime"))
    val, more = pool_rows(cfg, extra)
    pool = {k: val[k] + more[k] for k in val}
    out = {}
    for n in SIZES:
        rows = {k: v[:n] for k, v in pool.items()}
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            similarities(bench, model, rows)
            times.append(time.perf_counter() - t0)
        out[n] = statistics.median(times)
    return out


def analyse(trials: dict, draws: int) -> dict:
    nums = sorted(n for n, t in trials.items() if t["feasible"])
    first = trials[nums[0]]
    n_pool, n_test = len(first["pool_gold"]), len(first["test_gold"])
    test_q = {n: rho(trials[n]["test"], trials[n]["test_gold"]) for n in nums}
    best_test = max(test_q.values())
    rng = np.random.default_rng(0)
    res = {"feasible": nums, "test_quality": test_q, "pool_pairs": n_pool, "test_pairs": n_test, "pool": {}, "test": {}}
    for source, size_of in (("pool", n_pool), ("test", n_test)):
        for n in SIZES:
            if source == "pool" and n > size_of or source == "test" and n > size_of // 2:
                continue
            corrs, regrets = [], []
            for _ in range(1 if source == "pool" and n == size_of else draws):
                idx = rng.choice(size_of, size=n, replace=False)
                if source == "pool":
                    q = {t: rho(trials[t]["pool"][idx], trials[t]["pool_gold"][idx]) for t in nums}
                    judge = test_q
                else:  # select on n test pairs, judge on the rest of test
                    rest = np.setdiff1d(np.arange(size_of), idx)
                    q = {t: rho(trials[t]["test"][idx], trials[t]["test_gold"][idx]) for t in nums}
                    judge = {t: rho(trials[t]["test"][rest], trials[t]["test_gold"][rest]) for t in nums}
                corrs.append(rank_corr([q[t] for t in nums], [judge[t] for t in nums]))
                pick = max(nums, key=lambda t: q[t])
                regrets.append(max(judge.values()) - judge[pick])
            res[source][n] = {"rank_corr": float(np.mean(corrs)), "rank_corr_p10": float(np.quantile(corrs, 0.1)),
                              "rank_corr_p90": float(np.quantile(corrs, 0.9)), "regret": float(np.mean(regrets)),
                              "draws": len(corrs)}
    val500 = {t: rho(trials[t]["pool"][:500], trials[t]["pool_gold"][:500]) for t in nums}
    res["shipped_split"] = {"rank_corr": rank_corr([val500[t] for t in nums], [test_q[t] for t in nums]),
                            "regret": best_test - test_q[max(nums, key=lambda t: val500[t])]}
    return res


def report(res: dict, study: str, seconds: float) -> None:
    lines = ["# Validation split size vs the ranking on test (quickstart study)", "",
             f"`python -m benchmarks.validation_size {study}`: the {len(res['feasible'])} feasible trials, each run as "
             "its runtime runs it; quality = Spearman x100. A validation split of n pairs is drawn at random from a "
             f"pool of {res['pool_pairs']} STS-B train pairs (the shipped 500 and others the trials never trained "
             "on); the trials are ranked on it and judged on test (STS-B dev, 1,500 pairs). Noise floor: n pairs "
             "drawn from test, judged on the rest of test (same distribution). Rank correlation over the feasible "
             "trials (mean and p10-p90 over draws); regret = Spearman on the judging split of the best trial there "
             "minus that of the draw's pick. Scoring time per trial: seconds to score n pool pairs with the best "
             "feasible trial as its runtime runs it (median of 3), what a larger split adds to every trial.", "",
             "| n pairs | drawn from | rank corr. with the judge | p10-p90 | regret (points) | draws | "
             "scoring time per trial |", "|---:|---|---:|---:|---:|---:|---:|"]
    cost = {int(n): sec for n, sec in (res.get("cost_s") or {}).items()}
    for source, label in (("pool", "STS-B train, judged on test"), ("test", "STS-B dev, judged on the rest")):
        for n, r in res[source].items():
            lines.append(f"| {n} | {label} | {r['rank_corr']:.2f} | {r['rank_corr_p10']:.2f} to "
                         f"{r['rank_corr_p90']:.2f} | {r['regret']:.2f} | {r['draws']} | "
                         + (f"{cost[int(n)]:.1f} s" if int(n) in cost else "-") + " |")
    s = res["shipped_split"]
    spread = max(res["test_quality"].values()) - min(res["test_quality"].values())
    lines += ["", f"The shipped split (studies/data/sts-val-500.tsv): rank correlation {s['rank_corr']:.2f} with test, "
              f"regret {s['regret']:.2f} points. Test quality of the feasible trials spans {spread:.2f} points."]
    write_md(str(OUT), lines, f"{seconds / 60:.1f} min in the last call; load average "
             f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end (quality only).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="a study file whose storage holds a finished quickstart search")
    ap.add_argument("--pool", type=int, default=1500, help="calibration-file pairs added to the 500 (default 1500)")
    ap.add_argument("--draws", type=int, default=200)
    args = ap.parse_args()
    started = time.time()

    def log(msg):
        print(f"[{time.time() - started:5.0f} s] {msg}", file=sys.stderr, flush=True)

    res = analyse(collect(args.study, args.pool, log), args.draws)
    res["study"] = args.study
    res["cost_s"] = scoring_cost(args.study, args.pool, log)
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    report(res, args.study, time.time() - started)


if __name__ == "__main__":
    main()
