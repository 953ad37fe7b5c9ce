"""Transfer a finished study to another device.

Quality depends on the model, the task, the data and the plan, not on the device (up to the
rounding differences of another int8 kernel), so a study for device B can start from the
trials a study on device A has finished: each of A's plans is enqueued in B with A's quality
attached, and B only times it (`latency: measure`, a structure-only build: no Fisher, no mask
tuning, no distillation) or, after timing a few anchors, predicts its latency with B's
calibrated cost model (`latency: predict`). B's front appears in minutes; the study can then go
on searching on B as usual.
"""

from __future__ import annotations

import hashlib

import optuna
from optuna.trial import TrialState

from ..config import StudyConfig
from ..errors import UserError
from .finals import is_final_name
from .records import SOURCE_LATENCY_MS, TRANSFERRED_FROM, TRANSFERRED_QUALITY, StudyRecord, TrialRecord
from .storage import open_storage, storage_file

__all__ = ["data_meta", "transferable_trials"]

_SAME = ("model", "task", "space_fingerprint", "metric")


def data_meta(cfg: StudyConfig) -> dict:
    """What quality depends on besides the model, task and plan: the validation data as used."""
    path = cfg.resolve_path(cfg.data.validation)
    digest = None
    if path is not None and path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"validation_sha256": digest, "validation_size": cfg.data.validation_size,
            "max_length": cfg.task.max_length, "columns": dict(cfg.data.columns)}


def _source_url(cfg: StudyConfig) -> str:
    """A storage URL as given, or a file path (relative to the study file): .journal/.log/.jsonl
    files are journal storages, anything else a SQLite file."""
    src = cfg.transfer.source
    if "://" in src:
        return src
    if src.startswith("journal:"):
        return f"journal:{cfg.resolve_path(src[len('journal:'):])}"
    path = cfg.resolve_path(src)
    return str(path) if path.suffix in (".journal", ".log", ".jsonl") else f"sqlite:///{path}"


def _source_study(cfg: StudyConfig) -> optuna.Study:
    t = cfg.transfer
    url = _source_url(cfg)
    path = storage_file(url)
    if path is not None and not path.is_file():
        raise UserError(f"transfer.source: no study storage at {path}")
    storage = open_storage(url, read_only=True)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage) if not is_final_name(s.study_name)]
    name = t.study or (names[0] if len(names) == 1 else None)
    if name is None:
        raise UserError(f"transfer.source {url} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                        "name one with transfer.study")
    if name not in names:
        raise UserError(f"transfer.source {url} has no study {name!r}; it has: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def _check_same_problem(source: optuna.Study, meta: dict) -> None:
    stored = StudyRecord.of(source)
    for key in _SAME:
        there = getattr(stored, key)
        if there is not None and there != meta[key]:
            what = "search space" if key == "space_fingerprint" else key
            raise UserError(f"cannot transfer from study {source.study_name!r}: its {what} differs "
                            f"({there!r} there, {meta[key]!r} here); quality results would not apply")
    if stored.data is not None and stored.data != meta["data"]:
        raise UserError(f"cannot transfer from study {source.study_name!r}: its validation data or settings "
                        f"differ ({stored.data} there, {meta['data']} here)")


def transferable_trials(cfg: StudyConfig, meta: dict, log) -> list[tuple[dict, dict]]:
    """(params, user attrs) of every finished trial of the source study, checked to apply here.
    Reads only: call it before the new study is written."""
    source = _source_study(cfg)
    _check_same_problem(source, meta)
    stored = StudyRecord.of(source)
    if stored.data is None:
        log(f"note: study {source.study_name!r} predates data fingerprints; make sure it used the same "
            "validation data")
    done = [(t, TrialRecord.of(t)) for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done = [(t, rec) for t, rec in done if rec.quality is not None]
    dev = stored.device or {}
    how = "measured" if cfg.transfer.latency == "measure" else "predicted"
    log(f"transferring {len(done)} finished trial(s) from study {source.study_name!r} "
        f"({dev.get('cpu', '?')}, {dev.get('threads', '?')} threads, {dev.get('runtime', '?')}, "
        f"seq {dev.get('seq_len', '?')}): quality reused, latency {how} here")
    return [(t.params, {TRANSFERRED_QUALITY: rec.quality, TRANSFERRED_FROM: f"{source.study_name}#{t.number}",
                        SOURCE_LATENCY_MS: rec.latency_ms}) for t, rec in done]
