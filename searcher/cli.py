"""The `slimformer` command line. Exit codes: 0 success, 2 bad input (one line on stderr),
1 internal error, 130 interrupted.

Imports: everything.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from pathlib import Path

from .console import DEFAULT_STUDY, Parser
from .console import check_out_dir as _check_out_dir
from .console import load_plan as _load_plan
from .console import log as _log
from .console import one_line as _one_line
from .console import print_json as _print_json
from .console import study_or_default as _study_or_default
from .devices.artifacts import EXPORT_FORMATS
from .errors import UserError
from .tools import add_tool_commands

__all__ = ["main", "build_parser"]

def cmd_compress(args) -> int:
    from slimformer.methods import model_size, save_compressed
    from slimformer.methods.adapters import UnsupportedModelError

    from .config import load_study_config
    from .problem.workbench import Workbench

    plan = _load_plan(args.plan)
    cfg = load_study_config(args.study) if args.study else load_study_config(data={})
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": args.model})})
    out = Path(args.out)
    _check_out_dir(out, args.force)
    try:
        bench = Workbench(cfg, log=_log)
        model = bench.build(plan, log=_log)
    except UserError:
        raise
    except UnsupportedModelError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        raise UserError(f"plan does not fit the model: {exc}") from None
    size = model_size(model, plan.group_size)
    save_compressed(model, plan, out, tokenizer=bench.tokenizer, metrics=size, force=args.force)
    base = model_size(bench.model)
    _log(f"saved to {out}: {size['params']:,} params ({base['params']:,} before), "
         f"{size['size_mb']:.1f} MB ({base['size_mb']:.1f} MB before)"
         + (" [simulated low-bit weights]" if size["simulated"] else ""))
    return 0


def cmd_evaluate(args) -> int:
    from slimformer.methods import load_compressed, plan_of
    from slimformer.methods.adapters import UnsupportedModelError
    from slimformer.methods.export import MANIFEST, ExportError

    from .problem.workbench import Workbench

    cfg = _study_or_default(args.study)
    if args.data:
        from .problem.data import is_builtin_source

        data = args.data if is_builtin_source(args.data) else str(Path(args.data).resolve())
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"validation": data})})
    from .devices.artifacts import is_artifact

    target = Path(args.model)
    if is_artifact(target):
        return _evaluate_artifact(args, cfg, target)
    try:
        bench = Workbench(cfg, log=_log)
        if (target / MANIFEST).is_file() or (target.is_dir() and not (target / "config.json").is_file()):
            model, _, plan = load_compressed(target)
        else:
            from .problem.models import load_model

            model, plan = load_model(args.model, bench.task.model_class), None
    except (ExportError, UnsupportedModelError) as exc:
        raise UserError(str(exc)) from None
    plan = plan or plan_of(model)
    _log(f"evaluating on {cfg.data.validation} ({cfg.task.type}), timing vs the uncompressed {cfg.model.name} ...")
    result = bench.score(model, plan, full=True, rounds=args.rounds)
    result["baseline_quality"] = bench.quality(bench.model, full=True)["quality"]
    result["device"] = bench.facts()
    result["plan"] = plan.to_dict() if plan else None
    _print_result(result, args.json)
    return 0


def _evaluate_artifact(args, cfg, target: Path) -> int:
    """`evaluate` of an onnx/openvino artifact: every file checked against its sha256, then quality
    and latency measured on the artifact itself."""
    from slimformer.methods.export import ExportError

    from .devices.artifacts import evaluate_artifact
    from .problem.workbench import Workbench

    bench = Workbench(cfg, log=_log)
    _log(f"evaluating the artifact {target} on {cfg.data.validation} ({cfg.task.type}) ...")
    try:
        result = evaluate_artifact(bench, target, rounds=args.rounds)
    except ExportError as exc:
        raise UserError(str(exc)) from None
    result["baseline_quality"] = bench.quality(bench.model, full=True)["quality"]
    result["device"] = bench.facts()
    _print_result(result, args.json)
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        _print_json(result)
        return
    print(f"{result['metric']}: {result['quality']:.2f} (uncompressed {result['baseline_quality']:.2f})")
    print(f"latency: {result['latency_ms']:.2f} ms median [p10 {result['latency_p10_ms']:.2f}, p90 "
          f"{result['latency_p90_ms']:.2f}] vs {result['baseline_latency_ms']:.2f} ms -> "
          f"speedup {result['speedup']:.2f}x ({result['runtime']})")
    params = f"{result['params']:,} params, " if result.get("params") else ""
    print(f"size: {params}{result['size_mb']:.1f} MB"
          + (" (low-bit weights are SIMULATED: size is real, speed is float32)" if result["simulated"] else ""))


def cmd_search(args) -> int:
    from .backends.signals import stop_guard
    from .backends.workers import with_scale_out
    from .search import run_search
    from .study.records import handle_for

    cfg = _study_or_default(args.study)
    source = args.transfer_from
    if source and "://" not in source and Path(source.removeprefix("journal:")).exists():
        source = str(Path(source.removeprefix("journal:")).resolve())  # a path on the command line is cwd-relative
    overrides = {k: v for k, v in (("source", source), ("latency", args.transfer_latency)) if v}
    if overrides:
        cfg = cfg.model_copy(update={"transfer": cfg.transfer.model_copy(update=overrides)})
    cfg = with_scale_out(cfg, args.workers, args.backend, args.address)

    try:
        with stop_guard():  # 1st Ctrl-C/SIGTERM: stop cleanly; 2nd: exit at once (searcher/backends/signals.py)
            summary = run_search(cfg, trials=args.trials, timeout=args.timeout, storage=args.storage,
                                 study_name=args.study_name, seed=args.seed, log=_log)
    except KeyboardInterrupt:
        handle = handle_for(cfg, args.storage, args.study_name)
        _log(f"stopped: finished trials are saved in {handle.url}; the interrupted one will be retried. "
             f"Resume with the same command: slimformer {' '.join(shlex.quote(str(a)) for a in args.argv)}")
        return 130
    study_file = args.study or DEFAULT_STUDY
    best = summary["best"]
    print(f"study {summary['study']}: {summary['finished']}/{summary['target']} trials finished ({summary['storage']})")
    searched = summary.get("best_search")
    if best is None and searched is None:
        print("no trial meets the budget yet; run more trials or relax the budget")
    elif best is None:
        again = searched["retimed"]
        print(f"no trial holds the budget when re-timed: the best search trial {searched['number']} measured "
              f"{searched['speedup']:.2f}x in the search and {again['speedup']:.2f}x (lower bound {again['low']:.2f}x) "
              f"re-timed; run more trials, or export it anyway: slimformer export {study_file} "
              f"--trial {searched['number']} --out compressed/")
    else:
        from slimformer.methods import Plan

        b, again = summary["baseline"], best["retimed"]
        print(f"best under the budget: trial {best['number']}: {b['metric']} {best['quality']:.2f} "
              f"(uncompressed {b['quality']:.2f}), {again['speedup']:.2f}x faster re-timed ({again['confidence']:.0%} "
              f"lower bound {again['low']:.2f}x; {best['speedup']:.2f}x in the search), {best['size_mb']:.1f} MB")
        print("plan:")
        print(Plan.from_dict(best["plan"]).to_yaml().rstrip())
    print(f"report: slimformer report {study_file} --html report.html")
    if best is not None:
        print(f"then: slimformer finish {study_file} && slimformer export {study_file} --best --out compressed/")
    return 0


def cmd_report(args) -> int:
    from .report.collect import render_text, report_study, write_html

    cfg = _study_or_default(args.study)
    rep = report_study(cfg, storage=args.storage, study_name=args.study_name, rescore=not args.no_rescore, log=_log)
    if args.html:
        paths = write_html(rep, Path(args.html))
        _log("plot written to " + " and ".join(str(p) for p in paths))
    if args.json:
        rep = {k: v for k, v in rep.items() if k != "trials" or args.all}
        _print_json(rep)
    else:
        print(render_text(rep))
    return 0


def cmd_export(args) -> int:
    """Final models first (slimformer finish; searcher/finish.py), else the search trial."""
    from .finish import export_final_model, export_trial
    from .study.records import handle_for, open_study

    if sum((args.best, args.trial is not None, args.final is not None)) != 1:
        raise UserError("choose exactly one of --best, --trial N or --final N")
    cfg = _study_or_default(args.study)
    handle = handle_for(cfg, args.storage, args.study_name)
    study = open_study(handle, read_only=True)
    out = Path(args.out)
    done = None
    if args.best or args.final is not None:
        from .devices.artifacts import require_format
        from .problem.workbench import Workbench

        if args.format:
            require_format(args.format)
        done = export_final_model(handle.url, study, args.final, out, args.force, _check_out_dir, args.format,
                                  lambda: Workbench(cfg, log=_log))
    if not done:
        done = export_trial(cfg, study, args.best, args.trial, out, args.force, args.format, _check_out_dir, _log)
    print(done)
    print(f"check it: slimformer evaluate {out} --study {args.study or DEFAULT_STUDY}")
    return 0


def cmd_finish(args) -> int:
    from .finish import DEFAULT_TOP, render_finish, run_finish

    cfg = _study_or_default(args.study)
    try:
        summary = run_finish(cfg, storage=args.storage, study_name=args.study_name, top=DEFAULT_TOP if args.top is None
                             else args.top, steps=args.steps, minutes=args.minutes, log=_log)
    except KeyboardInterrupt:
        _log("stopped: the final models already stored are kept; the plan being trained starts again. Resume with "
             f"the same command: slimformer {' '.join(shlex.quote(str(a)) for a in args.argv)}")
        return 130
    print(render_finish(summary))
    print(f"export: slimformer export {args.study or DEFAULT_STUDY} --best --out compressed/")
    return 0


# ----- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="slimformer", description="Find the best compressed Transformer under a latency budget.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    c = sub.add_parser("compress", help="apply a given plan without search",
                       description="Apply a plan (YAML/JSON) to a model and save the compressed model.")
    c.add_argument("--model", required=True, help="local directory, hub id, or the alias minilm-l6")
    c.add_argument("--plan", required=True, help="plan file (.yaml or .json)")
    c.add_argument("--out", required=True, help="empty output directory")
    c.add_argument("--study", help="study file giving the task and calibration data (needed by fisher/distill)")
    c.add_argument("--force", action="store_true", help="write into a non-empty --out")
    c.set_defaults(func=cmd_compress)

    e = sub.add_parser("evaluate", help="quality, measured latency, speedup and size of a model",
                       description="Score a model or an export directory on a study's task, data and device.")
    e.add_argument("model", metavar="MODEL_OR_DIR", help="export directory, model directory, hub id or alias")
    e.add_argument("--study", help=f"study file (default {DEFAULT_STUDY})")
    e.add_argument("--data", help="validation file overriding the study's data.validation")
    e.add_argument("--rounds", type=int, default=None, help="latency rounds (default: the study's device.rounds)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("search", help="create or resume a study and run it",
                       description="Search compressed models under the study's budget; re-running resumes.")
    s.add_argument("study", nargs="?", metavar="STUDY.yaml", help=f"study file (default {DEFAULT_STUDY})")
    s.add_argument("--trials", type=int, help="finished trials the study should have (default: search.trials)")
    s.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    _storage_flags(s)
    s.add_argument("--backend", choices=("local", "ray"), help="local processes or Ray Tune (default: search.backend)")
    s.add_argument("--workers", type=int, help="trials at once: worker processes or Ray trials (default: search.workers)")
    s.add_argument("--address", help="with --backend ray: the Ray cluster to join (default: a local Ray)")
    s.add_argument("--seed", type=int, help="sampler seed (default: search.seed)")
    s.add_argument("--transfer-from", metavar="STORAGE",
                   help="reuse the quality results of a finished study on another device (transfer.source)")
    s.add_argument("--transfer-latency", choices=("measure", "predict"),
                   help="time each transferred plan here, or predict it with the cost model (transfer.latency)")
    s.set_defaults(func=cmd_search)

    r = sub.add_parser("report", help="baseline, Pareto front and best trial under the budget",
                       description="Report a study (read-only; works while it runs).")
    r.add_argument("study", nargs="?", metavar="STUDY.yaml", help=f"study file (default {DEFAULT_STUDY})")
    _storage_flags(r)
    r.add_argument("--json", action="store_true", help="print JSON")
    r.add_argument("--all", action="store_true", help="with --json: include every trial")
    r.add_argument("--html", metavar="FILE", help="write an interactive plot (and a PNG next to it)")
    r.add_argument("--no-rescore", action="store_true", help="skip re-scoring the front on the full split")
    r.set_defaults(func=cmd_report)

    x = sub.add_parser("export", help="rebuild a trial's model and save it",
                       description="Rebuild the best (or a given) trial's model from its plan and save it.")
    x.add_argument("study", nargs="?", metavar="STUDY.yaml", help=f"study file (default {DEFAULT_STUDY})")
    x.add_argument("--best", action="store_true", help="the best final model that holds the budget (slimformer "
                   "finish), else the best trial that holds re-timed")
    x.add_argument("--trial", type=int, help="trial number")
    x.add_argument("--final", type=int, metavar="N", help="the final model (slimformer finish) of search trial N")
    x.add_argument("--out", required=True, help="empty output directory")
    x.add_argument("--format", choices=EXPORT_FORMATS,
                   help="pytorch (safetensors, loads with slimformer), onnx or openvino (load without slimformer); "
                        "default: the format of the runtime the trial was timed in")
    x.add_argument("--force", action="store_true", help="write into a non-empty --out")
    _storage_flags(x)
    x.set_defaults(func=cmd_export)

    fi = sub.add_parser("finish", help="train the best plans properly into final models", description="Distil the K "
                        "best trials that hold re-timed on the corpus, score, re-time and store them (resumable).")
    fi.add_argument("study", nargs="?", metavar="STUDY.yaml", help=f"study file (default {DEFAULT_STUDY})")
    _storage_flags(fi)
    fi.add_argument("--top", type=int, help="how many trials to finish (default 3)")
    fi.add_argument("--steps", type=int, help="distillation steps per plan (default 1000)")
    fi.add_argument("--minutes", type=float, help="cap on the whole command's wall time (wins over --steps)")
    fi.set_defaults(func=cmd_finish)

    add_tool_commands(sub)

    return p


def _storage_flags(p) -> None:
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...) or a .journal file")
    p.add_argument("--study-name", help="study name in the storage (default: the study file's name)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what to repeat to resume
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return args.func(args) or 0
    except UserError as exc:
        print(f"slimformer {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimformer {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        from .study.storage import storage_fault

        fault = storage_fault(exc)
        if fault:  # a locked, read-only or full storage: one clear line, exit 2
            print(f"slimformer {args.command}: error: {_one_line(fault)}", file=sys.stderr)
            return 2
        if os.environ.get("SLIMFORMER_DEBUG"):
            traceback.print_exc()
        print(f"slimformer {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(set SLIMFORMER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
