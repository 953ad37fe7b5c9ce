"""What other work on the machine does to PyTorch's timings: float32 all-MiniLM-L6-v2 (batch 1,
128 tokens, 2 threads) timed in fresh processes with OpenMP's idle threads always spinning (ACTIVE;
unset, libgomp spins a while and then sleeps) or sleeping (PASSIVE), on the machine as it is and with other CPU-bound work
beside it (`--busy` single-threaded Python loops, the kind of load a shared machine or a second job
puts there). ONNX Runtime float32 is timed in the same processes, with spinning off as slimformer's
runtime sets it, as the reference that load alone moves.

The policy is read once, when libgomp loads (the `import torch`), so each setting needs its own
process; the processes alternate (ACTIVE, PASSIVE, ACTIVE, ...) so slow drift hits both alike.

    python -m benchmarks.wait_policy [--repeats 3] [--rounds 20] [--busy 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_md

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys
import torch
from slimformer.searcher.config import load_study_config
from slimformer.searcher.problem.workbench import Workbench
from slimformer.searcher.devices.latency import measure_latency
from slimformer.searcher.devices.registry import get_runtime
cfg = load_study_config(sys.argv[1])
bench = Workbench(cfg, log=lambda m: None)
runners = {"pytorch": get_runtime("eager").runner(bench.model, bench.inputs, 2),
           "onnxruntime": get_runtime("onnxruntime").runner(bench.model, bench.inputs, 2)}
lat = measure_latency(runners, baseline="pytorch", rounds=int(sys.argv[2]), warmup=3, threads=2)
print(json.dumps({k: v.median_ms for k, v in lat.items()}))
"""


def _spin():
    while True:
        pass


def child(policy: str, rounds: int) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    res = subprocess.run([sys.executable, "-c", CHILD, str(HERE.parent / "studies" / "quickstart.yaml"), str(rounds)],
                         capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--busy", type=int, default=2, help="busy loops beside the timing in the loaded condition")
    ap.add_argument("--out", default=str(RESULTS / "wait_policy_results"))
    args = ap.parse_args()
    import multiprocessing as mp

    started = time.monotonic()
    runs = []
    for condition in ("as is", f"{args.busy} busy loops"):
        spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy if condition != "as is" else 0)]
        for p in spinners:
            p.start()
        try:
            for r in range(args.repeats):
                for policy in ("ACTIVE", "PASSIVE") if r % 2 == 0 else ("PASSIVE", "ACTIVE"):
                    load = os.getloadavg()[0]
                    ms = child(policy, args.rounds)
                    runs.append({"condition": condition, "policy": policy, "load_1min": load, **ms})
                    print(runs[-1], flush=True)
        finally:
            for p in spinners:
                p.terminate()
    res = {"runs": runs, "rounds": args.rounds, "repeats": args.repeats, "busy": args.busy,
           "minutes": (time.monotonic() - started) / 60, "cores": os.cpu_count()}
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    report(res, args.out)


def report(res: dict, out: str) -> None:
    lines = ["# OpenMP wait policy and PyTorch latency (all-MiniLM-L6-v2 float32)", "",
             f"Command: `python -m benchmarks.wait_policy --repeats {res['repeats']} --rounds {res['rounds']} "
             f"--busy {res['busy']}` ({res['minutes']:.1f} min). One fresh process per figure; medians of "
             f"{res['rounds']} interleaved rounds; the table gives the median over the {res['repeats']} processes "
             "of each setting (min-max in brackets).", "",
             "| condition | OMP_WAIT_POLICY | PyTorch ms | ONNX Runtime ms | PyTorch / ORT |", "|---|---|---:|---:|---:|"]
    for condition in dict.fromkeys(r["condition"] for r in res["runs"]):
        for policy in ("ACTIVE", "PASSIVE"):
            rows = [r for r in res["runs"] if r["condition"] == condition and r["policy"] == policy]
            pt, ort = [r["pytorch"] for r in rows], [r["onnxruntime"] for r in rows]
            ratio = [a / b for a, b in zip(pt, ort)]
            lines.append(f"| {condition} | {policy} | {statistics.median(pt):.1f} ({min(pt):.1f}-{max(pt):.1f}) | "
                         f"{statistics.median(ort):.1f} | {statistics.median(ratio):.2f} |")
    loads = [r["load_1min"] for r in res["runs"]]
    write_md(out, lines, f"{res['cores']} cores, 2 threads per process; 1-minute load average {min(loads):.1f}-"
             f"{max(loads):.1f} when the processes started (absolute ms are notes; compare within a row).")


if __name__ == "__main__":
    main()
