"""SearchSession: a prepared study and everything a backend needs to run it (here in `study`,
which every backend may import).

`searcher.search.prepare` checks the study file, opens or creates the study, measures the
baseline once and builds the cost model once; the result is one SearchSession. Every backend
then has the same entry, `run(session)` (local, workers, raytune), and runs the study to
`session.target` counted trials; nothing else is handed over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from slimformer.spaces import Space

    from ..config import StudyConfig
    from ..cost.screen import StudyPredictor
    from ..problem.workbench import Workbench
    from .records import StudyHandle

__all__ = ["SearchSession"]


@dataclass
class SearchSession:
    """One search, prepared: the study, its space and baseline, and how far to run it."""

    cfg: StudyConfig
    study: optuna.Study
    handle: StudyHandle  # where the study is stored (storage url, study name)
    space: Space  # the search space bound to the model
    bench: Workbench  # this process's model, data and timer
    baseline: dict  # the uncompressed model as the study stored it (quality, latency, size)
    predictor: StudyPredictor | None  # the cost model (per runtime), re-fitted on the study's measured trials
    target: int  # counted trials the study runs to
    timeout: float | None  # seconds for this run (None: no limit)
    seed: int | None  # the sampler's seed (a worker process adds its index)
    log: Callable[[str], Any]  # one line of output
    progress: bool  # show the progress bar (on a terminal)
    run_search: Callable[..., dict]  # `searcher.search.run_search`, which each worker process runs
    # (handed in, so that the workers backend does not import the search)
