"""Create or resume a multi-objective Optuna study and run trials until it has the requested
number of finished ones. Every finished trial is in the storage as soon as it ends.

`run_search` is three steps: `prepare` (check the study file, bind the space, create or resume
the study, measure the baseline and build the cost model, each once) gives a `SearchSession`;
the chosen backend's `run(session)` runs the trials (backends/local.py, workers.py,
raytune.py); the summary re-times the best trials.

Imports: config, errors, spaces, methods, devices, cost, problem, study, backends, report.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from slimformer.methods import Plan, model_size, plan_needs_calibration
from slimformer.methods.adapters import UnsupportedModelError

from .backends import local, workers
from .backends.workers import check_scale_out, is_worker
from .config import StudyConfig
from .devices.registry import check_runtime, check_space, get_runtime, native_choices, study_formats
from .errors import UserError
from .study.budget import Budget
from .study.edge import EDGE, Edge, edge_seeds
from .study.owners import fail_stale_trials, register_owner
from .study.records import (
    DIRECTIONS,
    SCHEMA,
    SEEDED,
    StudyHandle,
    StudyRecord,
    TrialRecord,
    best_feasible,
    counted,
    handle_for,
    write_study,
)
from .study.seeds import sensitivity_seeds
from .study.session import SearchSession
from .study.storage import check_storage, open_storage, storage_file
from .study.transfer import data_meta, transferable_trials

__all__ = ["run_search", "prepare", "SAMPLERS", "BACKENDS", "registered"]


def _study_exists(handle: StudyHandle) -> bool:
    """Whether the study is already stored, without creating a storage file."""
    path = storage_file(handle.url)
    if path is not None and not path.is_file():
        return False
    storage = open_storage(handle.url, read_only=True)
    return handle.name in [s.study_name for s in optuna.study.get_all_study_summaries(storage)]


SAMPLERS: dict = {}  # search.sampler -> (seed, parallel) -> an Optuna sampler (config.SAMPLERS names them)
BACKENDS: dict = {}  # search.backend -> (cfg) -> the backend module that runs the trials (its `run(session)`)


def registered(table: dict, name: str):
    """Registers the decorated function in `table` under `name` (samplers and backends, as adapters are
    registered with methods.adapters.register_adapter)."""
    def register(fn):
        table[name] = fn
        return fn
    return register


@registered(SAMPLERS, "tpe")
def _tpe(seed, parallel):
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8,
                                      constant_liar=parallel > 1)


@registered(SAMPLERS, "nsga2")
def _nsga2(seed, parallel):
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)


@registered(SAMPLERS, "gp")
def _gp(seed, parallel):
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)


@registered(SAMPLERS, "random")
def _random(seed, parallel):
    return optuna.samplers.RandomSampler(seed=seed)


def _sampler(name: str, seed: int | None, parallel: int) -> optuna.samplers.BaseSampler:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name](seed, parallel)


def _summary(session: SearchSession, predictor) -> dict:
    """The search's final step: re-time the best feasible trials (searcher/report/retime.py); the best is
    the best of them that holds the budget re-timed. `predictor`: the cost model that saw this run's
    trials (None when they ran in other processes), whose error is reported."""
    from .report.retime import best_holding, retime

    study, handle, log = session.study, session.handle, session.log
    again = {} if is_worker() else retime(study, session.bench, log)  # a worker's summary is not shown
    best = best_holding(study)
    searched = best_feasible(study)
    for rt, err in ({} if predictor is None else predictor.errors()).items():  # runtimes with >= 3 measurements
        log(f"cost model on this study{'' if len(predictor.predictors) == 1 else f' ({rt})'}: MAPE "
            f"{err['mape'] * 100:.1f}%, Spearman {err['spearman']:.3f} (leave-one-out, n={err['n']})")
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    return {"study": handle.name, "storage": handle.url, "finished": done, "target": session.target,
            "baseline": session.baseline, "best": _brief(best, again), "best_search": _brief(searched, again)}


def _brief(trial, again: dict) -> dict | None:
    if trial is None:
        return None
    keys = ("quality", "latency_ms", "speedup", "speedup_low", "speedup_high", "size_mb", "plan")
    r = again.get(trial.number)
    return {"number": trial.number, **TrialRecord.of(trial).attrs(*keys),
            "retimed": None if r is None else r.to_dict()}


def _study_meta(cfg: StudyConfig, space, bench) -> dict:
    return {
        "schema": SCHEMA,
        "objectives": list(cfg.search.objectives),
        "space_fingerprint": space.fingerprint(),
        "model": cfg.model.name,
        "task": cfg.task.type,
        "metric": bench.task.metric,
        "budget": Budget.from_section(cfg.budget).to_dict(),
        "device": bench.facts(),
        "data": data_meta(cfg),
    }


def _check_compatible(study: optuna.Study, meta: dict, cfg: StudyConfig) -> None:
    stored = StudyRecord.of(study)
    if (stored.schema if stored.schema is not None else SCHEMA) > SCHEMA:
        raise UserError(f"study {study.study_name!r} was written by a newer slimformer (schema {stored.schema})")
    want = [optuna.study.StudyDirection.MAXIMIZE if DIRECTIONS[o] == "maximize" else
            optuna.study.StudyDirection.MINIMIZE for o in cfg.search.objectives]
    if list(study.directions) != want or stored.objectives not in (None, meta["objectives"]):
        raise UserError(f"study {study.study_name!r} was created with objectives {stored.objectives}, "
                        f"the file asks for {meta['objectives']}; use a new --study-name or storage")
    if stored.space_fingerprint not in (None, meta["space_fingerprint"]):
        raise UserError(f"study {study.study_name!r} was created with a different search space; "
                        "use a new --study-name (or restore the space) to keep results comparable")
    for key in ("model", "task"):
        if getattr(stored, key) not in (None, meta[key]):
            raise UserError(f"study {study.study_name!r} was created for {key} {getattr(stored, key)!r}, "
                            f"the file says {meta[key]!r}")


def _check_budget_reachable(cfg: StudyConfig, space, bench, log) -> Edge:
    """Measure a few plans along the size axis (searcher/study/edge.py): refuse a budget the smallest plan
    clearly misses (beyond the measured spread) and return the edge plans to queue first (none without a
    latency or size budget, or with search.seed_uniform off) with the measured axis."""
    b = Budget.from_section(cfg.budget)
    if not b.times_one_forward and b.size_mb is None:
        return Edge([], [])
    edge = edge_seeds(cfg, space, bench, log)
    return edge if cfg.search.seed_uniform else Edge([], edge.points)


def _predictor(cfg: StudyConfig, bench, log):
    """The calibrated cost model for this device, one predictor per runtime the study times candidates
    in (searcher/cost/screen.py; not yet fitted on any trial, see `_calibrate`), or None."""
    from .cost.profile import ProfileError
    from .cost.screen import study_predictor

    if cfg.device.generate is not None:  # it predicts one forward over batch x seq_len, not a decode step
        log("device.generate: no cost-model screening (the cost model does not predict prefill or decode yet)")
        return None
    try:
        return study_predictor(bench.runtimes, cfg.device.threads, cfg.resolve_path(cfg.device.profile),
                               bench.model.config, cfg.device.seq_len, cfg.device.batch_size,
                               getattr(bench.model, "pooler", None) is not None, log)
    except ProfileError as exc:
        raise UserError(str(exc)) from None


def _calibrate(predictor, study: optuna.Study) -> None:
    """Re-fit the cost model on the study's measured trials (each runtime on its own latency)."""
    from .study.trial import runtime_latencies

    if predictor is None:
        return
    base = StudyRecord.of(study).baseline["latency_ms"]
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = TrialRecord.of(t)
        if a.plan is not None and a.latency_ms and (a.latency_source or "measured") == "measured":
            predictor.observe(Plan.from_dict(a.plan), runtime_latencies(a.attrs(), base))


def _baseline(cfg: StudyConfig, bench, log) -> dict:
    log("measuring the uncompressed model (quality on the search split, latency) ...")
    q = bench.quality(bench.model)
    lat = bench.latency({}, rounds=max(cfg.device.rounds, 20))["baseline"]
    size = model_size(bench.model)
    return {"quality": q["quality"], "metric": q["metric"], "latency_ms": lat.median_ms,
            "latency_spread_ms": lat.p90_ms - lat.p10_ms, "size_mb": size["size_mb"], "params": size["params"],
            **bench.baseline_facts()}


def _native(cfg: StudyConfig, bench) -> tuple[list[int], list[str]]:
    """(bit-widths, int8 schemes) this device runs on real kernels in the study's runtimes (bits 16 only
    with native bf16: AMX or AVX512-BF16; static int8 only with data.calibration to calibrate on)."""
    fast_bf16 = bool(set(bench.facts()["flags"]) & {"amx_bf16", "avx512_bf16"})
    bits, schemes = native_choices(bench.runtimes, fast_bf16)
    return bits, schemes if cfg.data.calibration is not None else [s for s in schemes if s != "static"]


def _default_space(cfg: StudyConfig, bench, log):
    """The default space, adapted to what this device and study can use."""
    from slimformer.methods.plan import ATTENTION_IMPLEMENTATIONS, INT8_WEIGHTS
    from slimformer.spaces import NATIVE, AttentionDim, BitsDim, ImportanceDim, Int8WeightsDim, default_space

    space = default_space().model_copy(update={"bits": BitsDim(choices=NATIVE)})
    if cfg.data.calibration is None:
        space = space.model_copy(update={"importance": ImportanceDim(choices=["magnitude"]), "recovery": None,
                                         "distill": None})
        log("no data.calibration: the default space leaves out Fisher importance, mask tuning and distillation")
    if any(get_runtime(n).reads_int8_weights for n in bench.runtimes):  # the int8 weights change its quality
        space = space.model_copy(update={"int8_weights": Int8WeightsDim(choices=list(INT8_WEIGHTS))})
    if any(get_runtime(n).reads_attention for n in bench.runtimes):  # a pruned or int8 model may prefer the other
        space = space.model_copy(update={"attention": AttentionDim(choices=list(ATTENTION_IMPLEMENTATIONS))})
    return space


def run_search(cfg: StudyConfig, *, trials: int | None = None, timeout: float | None = None,
               storage: str | None = None, study_name: str | None = None, seed: int | None = None,
               log=print, progress: bool = True) -> dict:
    """Create or resume the study and run it to `trials` finished trials; returns a summary."""
    session = prepare(cfg, trials=trials, timeout=timeout, storage=storage, study_name=study_name, seed=seed,
                      log=log, progress=progress)
    backend = _backend(cfg)
    backend.run(session)
    # K worker processes each calibrate their own cost model: the parent's saw none of their trials
    return _summary(session, None if backend is workers else session.predictor)


def _backend(cfg: StudyConfig):
    """The backend module that runs the trials (each has `run(session)`)."""
    return BACKENDS[cfg.search.backend](cfg)


@registered(BACKENDS, "ray")
def _ray(cfg: StudyConfig):
    from .backends import raytune  # Ray Tune (searcher/backends/raytune.py; imports Ray)

    return raytune


@registered(BACKENDS, "local")
def _local(cfg: StudyConfig):
    if cfg.search.workers > 1 and not is_worker():  # K processes on this storage (searcher/backends/workers.py)
        return workers
    return local  # this process (searcher/backends/local.py); also what each worker runs


def prepare(cfg: StudyConfig, *, trials: int | None = None, timeout: float | None = None,
            storage: str | None = None, study_name: str | None = None, seed: int | None = None,
            log=print, progress: bool = True) -> SearchSession:
    """Check the study file, bind the space to the model, create or resume the study (a new one
    is written only after every check and measurement) and build the cost model: the session a
    backend runs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handle = handle_for(cfg, storage, study_name)
    check_storage(handle.url)
    check_scale_out(cfg, handle.url)
    target = trials or cfg.search.trials
    seed = cfg.search.seed if seed is None else seed
    bench, space = _bind_space(cfg, log)
    meta = _study_meta(cfg, space, bench)
    predictor = _predictor(cfg, bench, log)
    study = _open_study(cfg, handle, space, bench, meta, predictor, target, seed, log)
    baseline = StudyRecord.of(study).baseline
    bench.adopt(baseline)
    fail_stale_trials(study, log)
    register_owner(study)
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    log(f"study {handle.name!r} in {handle.url}: {done} finished trial(s), running to {target}")
    for line in space.describe():
        log(f"  {line}")
    _calibrate(predictor, study)
    return SearchSession(cfg=cfg, study=study, handle=handle, space=space, bench=bench,
                         baseline=baseline, predictor=predictor, target=target,
                         timeout=timeout or cfg.search.timeout, seed=seed, log=log, progress=progress,
                         run_search=run_search)


def _bind_space(cfg: StudyConfig, log):
    """The workbench (model, data, timer) and the search space bound to its model, checked."""
    from slimformer.spaces import Space, SpaceError, parse_space_config

    from .problem.workbench import Workbench

    runtimes = check_runtime(cfg.device.runtime)  # the study's runtime set, decided once: the Workbench holds it
    if cfg.space is not None:  # bit-widths the runtime cannot run: one line before any model is loaded
        given = parse_space_config(cfg.space)
        check_space(runtimes, given.bits.choices if given.bits is not None and not given.bits.native else [],
                    getattr(given.quant_method, "choices", ()), str(cfg.path or "study"),
                    getattr(given.int8_weights, "choices", ()), getattr(given.attention, "choices", ()),
                    getattr(given.int8_scheme, "choices", ()),
                    shared_bits=given.bits is not None and given.bits.tie == "shared")
    try:
        bench = Workbench(cfg, log=log, runtimes=runtimes)
        shape = bench.shape  # the model's adapter looked up once, by the workbench
    except UnsupportedModelError as exc:
        raise UserError(str(exc)) from None
    try:
        space_cfg = parse_space_config(cfg.space) if cfg.space is not None else _default_space(cfg, bench, log)
        if space_cfg.bits is not None and space_cfg.bits.native:
            bits, schemes = _native(cfg, bench)
            space_cfg = space_cfg.with_native(bits, schemes)
            formats = "; ".join(f"{n}: {', '.join(fs)}" for n, fs in study_formats(bench.runtimes).items())
            schemes_note = f"; int8 schemes {', '.join(schemes)}" if 8 in bits else ""
            log(f"bits: native on this CPU: {', '.join(map(str, bits))}{schemes_note} (real kernels: {formats})")
        space = Space.from_dict(space_cfg, shape)
    except SpaceError as exc:
        raise UserError(str(exc)) from None
    # one choice decides whether a plan reads calibration batches (each method's rule, methods/registry.py),
    # so some plan of the space does when one of its choice plans does (searched or a one-choice constant)
    if cfg.data.calibration is None and any(plan_needs_calibration(p, shape) for p in space.choice_plans()):
        raise UserError("the space searches fisher importance, mask tuning, distillation, gptq or smoothing, "
                        "which need data.calibration")
    if cfg.search.seed_sensitivity and cfg.data.calibration is None:
        raise UserError("search.seed_sensitivity needs data.calibration")
    return bench, space


def _open_study(cfg: StudyConfig, handle: StudyHandle, space, bench, meta: dict, predictor, target: int,
                seed: int | None, log) -> optuna.Study:
    """The stored study, checked against the file; or a new one, with its metadata, the measured
    baseline and the queued plans (transferred, uniform, sensitivity-seeded)."""
    sampler = _sampler(cfg.search.sampler, seed, cfg.search.workers)
    if _study_exists(handle):
        study = optuna.load_study(study_name=handle.name, storage=open_storage(handle.url), sampler=sampler)
        _check_compatible(study, meta, cfg)
        return study
    transferred, sensitivity = [], []  # everything is checked and measured before the storage is first written
    if cfg.transfer.source is not None:
        transferred = transferable_trials(cfg, meta, log)
        if cfg.transfer.latency == "predict" and predictor is None:
            raise UserError("transfer.latency: predict needs this device's cost model: run `slimformer "
                            f"profile --threads {cfg.device.threads}` first, or use transfer.latency: measure")
        if len(transferred) > target:
            log(f"note: {target} of the {len(transferred)} transferred trials run now (--trials {target})")
    edge = _check_budget_reachable(cfg, space, bench, log)
    first_baseline = _baseline(cfg, bench, log)
    if cfg.search.seed_sensitivity and cfg.transfer.source is None:
        sensitivity = sensitivity_seeds(space, bench, log)
    study = optuna.create_study(storage=open_storage(handle.url), study_name=handle.name,
                                directions=[DIRECTIONS[o] for o in cfg.search.objectives], sampler=sampler)
    write_study(study, **meta, baseline=first_baseline)
    for params in edge.seeds:  # first: the budget's edge (searcher/study/edge.py)
        study.enqueue_trial(params, user_attrs={SEEDED: EDGE}, skip_if_exists=True)
    for params, attrs in transferred:
        study.enqueue_trial(params, user_attrs=attrs)
    if cfg.search.seed_uniform and cfg.transfer.source is None:
        for params in edge.worth_trying(cfg, space, space.uniform_plans(), log):
            study.enqueue_trial(params, user_attrs={SEEDED: True}, skip_if_exists=True)
    for params in sensitivity:  # after the uniform plans (search.seed_sensitivity)
        study.enqueue_trial(params, user_attrs={SEEDED: "sensitivity"}, skip_if_exists=True)
    return study
