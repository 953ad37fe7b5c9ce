"""The commands that look at a device, a plan or a model's layers without running a search:
`slimformer profile`, `predict` and `sensitivity`.

Imports: everything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .console import DEFAULT_STUDY, load_plan, log, print_json, study_or_default
from .errors import UserError

__all__ = ["add_tool_commands", "cmd_profile", "cmd_predict", "cmd_sensitivity"]


def cmd_profile(args) -> int:
    from .cost.profile import ProfileError, default_profile_path, profile_device, save_profile

    grid = {k: v for k, v in (("hidden_sizes", args.hidden_sizes), ("head_dims", args.head_dims),
                              ("tokens", args.tokens)) if v is not None}
    try:
        profile = profile_device(args.threads, args.runtime, quick=args.quick, progress=True, **grid)
    except ProfileError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out) if args.out else default_profile_path(args.threads, args.runtime)
    save_profile(profile, out)
    print(f"device profile written to {out}")
    return 0


def cmd_predict(args) -> int:
    import transformers

    from .cost.costmodel import predict
    from .cost.profile import ProfileError, find_profile
    from .problem.models import resolve_model_path

    plan = load_plan(args.plan)
    try:
        config = transformers.AutoConfig.from_pretrained(resolve_model_path(args.model))
    except OSError as exc:
        raise UserError(f"cannot read the config of {args.model!r}: {str(exc).splitlines()[0]}") from None
    try:
        profile = find_profile(args.threads, args.runtime, args.profile)
    except ProfileError as exc:
        raise UserError(str(exc)) from None
    if profile is None:
        raise UserError(f"no device profile for this machine ({args.threads} threads, {args.runtime}); "
                        f"run `slimformer profile --threads {args.threads}` first or pass --profile FILE")
    try:
        result = predict(plan, config, profile, seq_len=args.seq_len, batch_size=args.batch_size)
    except ValueError as exc:
        raise UserError(f"plan does not fit the model: {exc}") from None
    result["device"] = profile["fingerprint"]
    if args.json:
        print_json(result)
    else:
        print(f"predicted latency: {result['latency_ms']:.2f} ms (batch {args.batch_size}, {args.seq_len} tokens, "
              f"{profile['fingerprint'].get('threads')} threads, {profile['fingerprint'].get('runtime')})")
        print(f"size: {result['params']:,} params, {result['size_mb']:.1f} MB; peak memory ~{result['peak_memory_mb']:.0f} MB"
              + (" (simulated low-bit weights: latency as float32)" if result["simulated"] else ""))
    return 0


def cmd_sensitivity(args) -> int:
    from slimformer.methods import Plan
    from slimformer.methods.sensitivity import layer_sensitivity, sensitivity_plans, uniform_sizes

    from .problem.workbench import Workbench

    try:
        allowed = sorted({int(b) for b in args.bits.split(",")}, reverse=True)
        Plan(bits=allowed)
    except ValueError:
        raise UserError(f"--bits must be a comma-separated list of 32, 16, 8, 4, 3, 2; got {args.bits!r}") from None
    if len(allowed) < 2:
        raise UserError("--bits needs at least two bit-widths to choose from")
    cfg = study_or_default(args.study)
    bench = Workbench(cfg, log=log)
    if bench.calibration is None:
        raise UserError("sensitivity needs calibration data with a task loss: set data.calibration")
    base = Plan(group_size=args.group_size)
    log(f"sensitivity ({args.method}) on {len(bench.calibration.batches)} calibration batches ...")
    scores = layer_sensitivity(bench.model, bench.calibration, args.method)
    uniform = dict(zip(allowed[1:], uniform_sizes(bench.model, base, allowed[1:])))
    plans = sensitivity_plans(bench.model, bench.calibration, base, allowed, list(uniform.values()),
                              sensitivity=scores)
    result = {
        "method": args.method, "allowed_bits": allowed, "group_size": args.group_size,
        "layers": [{"layer": i, "sensitivity": s} for i, s in enumerate(scores)],
        "suggestions": [{"target": f"size of uniform {b}-bit", "size_mb": mb, "bits": list(plan.bits),
                         "simulated": plan.simulated} for (b, mb), plan in zip(uniform.items(), plans)],
    }
    if args.json:
        print_json(result)
    else:
        print(f"per-layer sensitivity ({args.method} trace per weight; higher = keep more bits):")
        for row in result["layers"]:
            print(f"  layer {row['layer']}: {row['sensitivity']:.3e}")
        print(f"suggested bits from {allowed} (seed these plans as search trials):")
        for sug in result["suggestions"]:
            print(f"  {sug['target']} ({sug['size_mb']:.1f} MB): bits {sug['bits']}"
                  + ("  [<8-bit weights SIMULATED: size and quality real, no low-bit speed]" if sug["simulated"] else ""))
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    """'64,128' -> (64, 128): positive integers, comma-separated (an argparse type)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def add_tool_commands(sub) -> None:
    """Add profile, predict and sensitivity to the `slimformer` subcommands `sub`."""
    pr = sub.add_parser("profile", help="microbenchmark this device into a device profile",
                        description="Time linear layers, attention and per-layer overhead on this device.")
    pr.add_argument("--out", help="profile file (default: this device's cache entry, used automatically)")
    pr.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    pr.add_argument("--runtime", default="eager", help="eager (default), onnxruntime or openvino")
    pr.add_argument("--quick", action="store_true", help="a small grid (seconds; less accurate)")
    pr.add_argument("--hidden-sizes", type=_int_list, metavar="H,...",
                    help="hidden sizes to centre the width grid on (default 384, all-MiniLM-L6-v2's)")
    pr.add_argument("--head-dims", type=_int_list, metavar="D,...", help="attention head sizes (default 32,64)")
    pr.add_argument("--tokens", type=_int_list, metavar="T,...",
                    help="batch x sequence-length points (default 8,32,128,512; with --quick 32,128)")
    pr.set_defaults(func=cmd_profile)

    pd = sub.add_parser("predict", help="predicted latency, size and memory of a plan, without building it",
                        description="Predict a plan's cost on a device from its profile and the model config.")
    pd.add_argument("--plan", required=True, help="plan file (.yaml or .json)")
    pd.add_argument("--model", required=True, help="local directory, hub id, or the alias minilm-l6")
    pd.add_argument("--profile", help="device profile (default: this device's, made by `slimformer profile`)")
    pd.add_argument("--threads", type=int, default=2, help="threads of the default profile")
    pd.add_argument("--runtime", default="eager", help="runtime of the default profile")
    pd.add_argument("--seq-len", type=int, default=128)
    pd.add_argument("--batch-size", type=int, default=1)
    pd.add_argument("--json", action="store_true", help="print JSON")
    pd.set_defaults(func=cmd_predict)

    sn = sub.add_parser("sensitivity", help="per-layer quantization sensitivity and suggested mixed bits",
                        description="Fisher (or Hutchinson Hessian) trace per layer from the calibration data, and "
                                    "the per-layer bits it suggests at the sizes of uniform bit-widths.")
    sn.add_argument("study", nargs="?", metavar="STUDY.yaml", help=f"study file (default {DEFAULT_STUDY})")
    sn.add_argument("--bits", default="8,4,3,2", help="allowed bit-widths, comma-separated (default 8,4,3,2)")
    sn.add_argument("--method", choices=("fisher", "hessian"), default="fisher", help="trace estimate")
    sn.add_argument("--group-size", type=int, default=64, help="group size of the 4/3/2-bit weights")
    sn.add_argument("--json", action="store_true", help="print JSON")
    sn.set_defaults(func=cmd_sensitivity)
