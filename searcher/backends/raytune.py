"""`--backend ray`: Ray Tune runs the candidates, Optuna (through Tune's `OptunaSearch`) picks
them, and the study's own storage keeps every trial, so `report` and `export` read a Ray-written
study exactly like a local one.

Only the driver process touches the Optuna study: `OptunaSearch.suggest` asks the study and calls
the slimformer space's `sample(trial)` as a define-by-run function (so params are the same as in a
local search; the cost-model pre-screen runs there too), Ray workers run the plain-data step
`trial.evaluate` (build, score, time), and `on_trial_complete` records the result with
`trial.record` (user attrs, budget constraints: OptunaSearch itself passes no constraints) and
tells the study once. Because the driver is the only writer, any storage works, SQLite included.

Resuming: the Optuna study is the state. Re-running the same command (after Ctrl-C or a killed
driver) marks the dead driver's running trials failed, queues their plans again and starts a new
Tune run for the trials still missing; finished trials are kept. Tune's own `Tuner.restore` is not
used: it would replay a pickled searcher whose running Optuna trials no longer exist.

Timing: a Ray trial builds and scores at its share of the CPUs and times at the study's
`device.threads`, holding its node's timing lock (searcher/devices/timelock.py: a file in the node's
temporary folder, so one measurement at a time per node, nothing else of the study running beside
it; the trial records its wait). A worker's start-up (imports, loading the model: raytrial.py) and the
driver's sampling are study work under the same lock, so neither runs beside a measurement. A node whose CPU model or ISA flags differ from the study's stored
device facts is refused for timing: the trial fails with the reason ("refused for timing: ...") and
never enters the front (`devices.latency.cpu_refusal`).

Ray is optional and imported only here (pip install 'slimformer[ray]').
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter obeys verbose=0 (no tables on stdout)

from optuna.storages._heartbeat import get_heartbeat_thread  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from ..devices.timelock import lock_path, timing_lock  # noqa: E402
from ..study.owners import owner_attrs  # noqa: E402
from ..study.records import FAIL_REASON, REJECTED, StudyRecord, requeue  # noqa: E402
from ..study.session import SearchSession  # noqa: E402
from ..study.storage import storage_file  # noqa: E402
from ..study.trial import MAX_REJECTIONS_IN_A_ROW, Rejected, propose, record  # noqa: E402
from .faults import FAULT_ENV, parse_faults  # noqa: E402
from .raytrial import RESULT, evaluate_plan  # noqa: E402
from .workers import worker_config, worker_threads  # noqa: E402

__all__ = ["run", "SlimformerSearch"]



class SlimformerSearch(OptunaSearch):
    """OptunaSearch on an existing slimformer study: same plans, user attrs and constraints."""

    def __init__(self, session: SearchSession, progress):
        study = self._given_study = session.study
        self.cfg, self.slim_space, self.baseline = session.cfg, session.space, session.baseline
        self.predictor = session.predictor
        self.progress = progress
        self.plans, self.heartbeats = {}, {}
        self.rejected_in_a_row = 0
        modes = ["max" if d.name == "MAXIMIZE" else "min" for d in study.directions]
        super().__init__(space=self._define, metric=list(self.cfg.search.objectives), mode=modes)

    def _setup_study(self, mode):
        self._ot_study = self._given_study

    def _define(self, trial) -> dict:
        for key, value in owner_attrs().items():
            trial.set_user_attr(key, value)
        may_reject = self.cfg.search.prescreen and self.rejected_in_a_row < MAX_REJECTIONS_IN_A_ROW
        plan = propose(trial, self.cfg, self.slim_space, self.baseline, self.predictor, may_reject)
        return {"plan": plan.to_dict()}

    def suggest(self, trial_id: str):
        # the sampler and the cost-model pre-screen run in this driver process: study work, held off a measurement
        with timing_lock(lock_path(self.cfg.path.parent if self.cfg.path else None)).working():
            return self._suggest(trial_id)

    def _suggest(self, trial_id: str):
        while True:
            try:
                config = super().suggest(trial_id)
            except Rejected as exc:
                ot_trial = self._ot_trials.pop(trial_id)
                ot_trial.set_user_attr(REJECTED, str(exc))
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                self.rejected_in_a_row += 1
                self.progress.trial_rejected(ot_trial.number, str(exc))
                continue
            ot_trial = self._ot_trials[trial_id]
            self.plans[trial_id] = config["plan"]
            beat = get_heartbeat_thread(ot_trial._trial_id, self._ot_study._storage)
            beat.__enter__()
            self.heartbeats[trial_id] = beat
            return {"plan": config["plan"], "number": ot_trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # one result per trial: everything happens on completion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from slimformer.methods import Plan

        from ..study.records import best_feasible

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        beat = self.heartbeats.pop(trial_id, None)
        if beat is not None:
            beat.__exit__(None, None, None)
        self._completed_trials.add(trial_id)
        self.rejected_in_a_row = 0
        if result and RESULT in result and not error:
            plan = Plan.from_dict(self.plans[trial_id])
            values = record(ot_trial, self.cfg, self.baseline, plan, json.loads(result[RESULT]), self.predictor)
            frozen = self._ot_study.tell(ot_trial, values)
            self.progress.trial_done(frozen, best_feasible(self._ot_study))
            return
        reason = (result or {}).get("error") or "the Ray trial failed (see the Ray logs)"
        ot_trial.set_user_attr(FAIL_REASON, reason)
        self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        self.progress.trial_failed(ot_trial.number, reason)

    def requeue_unfinished(self, log) -> int:
        """Trials Tune did not finish (Ctrl-C, errors in Tune itself): failed, plan queued again."""
        n = 0
        for trial_id, ot_trial in list(self._ot_trials.items()):
            if trial_id in self._completed_trials:
                continue
            beat = self.heartbeats.pop(trial_id, None)
            if beat is not None:
                beat.__exit__(None, None, None)
            requeue(self._ot_study, ot_trial, "interrupted (the Ray run stopped)")
            self._completed_trials.add(trial_id)
            log(f"trial {ot_trial.number} was interrupted; queued again")
            n += 1
        return n

    def __getstate__(self):  # Tune checkpoints its searcher; the study in the storage is the state
        return {}

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def ray_folder(cfg, handle) -> Path:
    """Where Tune writes its run folders: next to the study's file (for a server, the study file's)."""
    path = storage_file(handle.url)
    base = path.parent if path is not None else (cfg.path.parent if cfg.path else Path.cwd())
    return base / f"{handle.name}-ray"


def run(session: SearchSession) -> None:
    """Run the study to `session.target` counted trials with Ray Tune (cfg.search.workers at once)."""
    import logging

    import ray
    from ray import tune

    from ..study.records import counted
    from .progress import SearchProgress

    cfg, study, log, target, baseline = session.cfg, session.study, session.log, session.target, session.baseline
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    missing = target - done
    if missing <= 0:
        return
    k = cfg.search.workers
    address = cfg.search.ray_address
    threads = worker_threads(cfg) if address is None else (cfg.search.worker_threads or cfg.device.threads)
    tcfg = worker_config(cfg, threads)  # builds and scores at `threads`, times at device.threads (timing lock)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    init = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        init["num_cpus"] = k * threads  # exactly k trials at once on this machine
    else:
        init["address"] = address
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(**init)
    log(f"Ray Tune: {missing} trial(s), {k} at once, {threads} CPU(s)/torch thread(s) each to build and score, "
        f"every latency measurement at the study's {cfg.device.threads} thread(s), one at a time per node, "
        f"{'cluster ' + address if address else 'a local Ray on this machine'}")
    bar = SearchProgress(target, done, baseline, enabled=False, log=log)
    searcher = SlimformerSearch(session, bar)
    trainable = tune.with_resources(tune.with_parameters(evaluate_plan, cfg=tcfg, baseline=baseline,
                                                        faults=parse_faults(os.environ.get(FAULT_ENV, "")),
                                                        device=StudyRecord.of(study).device),
                                    {"cpu": threads})
    storage_path = str(ray_folder(cfg, session.handle))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=missing, max_concurrent_trials=k,
                                    time_budget_s=session.timeout, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"t{t.trial_id}"),
        run_config=tune.RunConfig(name=time.strftime("run-%Y%m%d-%H%M%S"), storage_path=storage_path, verbose=0),
    )
    try:
        tuner.fit()
    finally:
        interrupted = searcher.requeue_unfinished(log)
        if started_ray:
            ray.shutdown()
    if interrupted:  # Tune stops quietly on Ctrl-C: say so like a local search (exit 130, resume hint)
        raise KeyboardInterrupt
