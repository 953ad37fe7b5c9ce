"""Final models: the plans `slimformer finish` trained properly, kept apart from the search.

They live in a sibling study `<name>:final` in the search's storage (one COMPLETE trial per
final model, value = quality on the full validation split, user attributes linking it to its
search trial), so the search's sampler, its trial counts and its front never see them. Their
weights are an ordinary export folder (`<study name>-final/trial-<N>/` next to the study file);
their re-timed speedups (one interleaved measurement of all of them against the uncompressed
model, bounded like the search's re-timing: searcher/report/retime.py) are the final study's user
attribute `timing`, in the shape of the search's (`records.Retiming`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..config import StudyConfig
from .budget import Budget
from .records import TIMING_ATTR, FinalRecord, Retiming, StudyRecord
from .storage import open_storage, storage_file

__all__ = ["FINAL_SUFFIX", "final_name", "is_final_name", "open_finals", "final_rows", "best_holding_final",
           "final_folder", "final_table", "TIMING_ATTR"]

FINAL_SUFFIX = ":final"


def final_name(search_name: str) -> str:
    return search_name + FINAL_SUFFIX


def is_final_name(name: str) -> bool:
    return name.endswith(FINAL_SUFFIX)


def final_folder(cfg: StudyConfig, search_name: str, number: int) -> Path:
    """Where the final model of search trial `number` is saved."""
    folder = cfg.path.parent if cfg.path else Path.cwd()
    return folder / f"{search_name.replace(':', '_')}-final" / f"trial-{number}"


def open_finals(url: str, search_name: str, create: bool = False) -> optuna.Study | None:
    """The final study of a search study (None when there is none and `create` is False)."""
    path = storage_file(url)
    if not create and path is not None and not path.is_file():
        return None
    storage = open_storage(url, read_only=not create)
    name = final_name(search_name)
    if create:
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def final_rows(url: str, search_name: str, budget: Budget | None = None) -> list[dict]:
    """One dict per final model, best validation quality first: its search trial, steps, validation
    and test quality, speedup re-timed with its interval (None until timed) and `holds`: the re-timed
    lower bound meets the budget's speedup, and its quality and size meet the rest of the budget
    (`Budget.final_holds`)."""
    finals = open_finals(url, search_name)
    if finals is None:
        return []
    timing = Retiming.from_dict(finals.user_attrs.get(TIMING_ATTR)).trials
    base = (StudyRecord.of(finals).baseline or {}).get("quality")
    budget = budget or Budget()
    rows = []
    for t in finals.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = FinalRecord.of(t)
        a = rec.attrs()
        timed = timing.get(rec.search_trial)
        a.update(speedup_retimed=None, retimed_low=None, retimed_high=None, holds=None)
        if timed is not None:
            holds = budget.final_holds(timed.holds, base, rec.quality, rec.size_mb)
            a.update(speedup_retimed=timed.speedup, retimed_low=timed.low, retimed_high=timed.high, holds=holds,
                     retimed=replace(timed, holds=holds).to_dict())  # what an export's metrics carry
        rows.append(a)
    return sorted(rows, key=lambda r: -r["quality"])


def best_holding_final(url: str, search_name: str, budget: Budget | None = None) -> dict | None:
    """The final model of highest validation quality that holds the budget re-timed, or None."""
    return next((r for r in final_rows(url, search_name, budget) if r["holds"]), None)


def final_table(rows: list[dict]) -> list[str]:
    """Text table of final models: steps, search quality, full validation and test quality, speedup re-timed."""
    def num(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    lines = [f"{'trial':>5} {'steps':>6} {'search':>8} {'valid':>7} {'test':>7} {'re-timed':>8} {'interval':>14}  holds"]
    for r in rows:
        bounds = "-" if r["retimed_low"] is None else f"[{r['retimed_low']:.2f}, {r['retimed_high']:.2f}]"
        lines.append(f"{r['search_trial']:>5} {r['steps']:>6} {r['search_quality']:>8.2f} {r['quality']:>7.2f} "
                     f"{num(r.get('test_quality')):>7} {num(r['speedup_retimed'], '{:.2f}x'):>8} {bounds:>14}  "
                     + {True: "yes", False: "no", None: "-"}[r["holds"]])
    return lines
