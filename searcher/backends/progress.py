"""Progress of a search: a rich progress bar (trials done, best feasible so far, ETA) and
one concise log line per trial."""

from __future__ import annotations

import sys

from ..study.records import TrialRecord

__all__ = ["SearchProgress"]


class SearchProgress:
    def __init__(self, target: int, done: int, baseline: dict, enabled: bool = True, log=print):
        self.target, self.done, self.baseline, self.log = target, done, baseline, log
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("search", total=self.target, completed=self.done,
                                                 best="best feasible: none yet")
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False

    def _print(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, highlight=False, markup=False)
        else:
            self.log(line)

    def _advance(self, best_text: str | None = None) -> None:
        self.done += 1
        if self._progress is not None:
            fields = {"best": best_text} if best_text else {}
            self._progress.update(self._task, completed=self.done, **fields)

    def trial_done(self, trial, best) -> None:
        a = TrialRecord.of(trial)
        q0 = self.baseline["quality"]
        flag = "feasible" if a.feasible else "over budget"
        sim = " [simulated bits]" if a.simulated else ""
        seeded = a.seeded  # queued before the sampler ran (study.records.SEEDED)
        sim += f" seeded: {seeded if isinstance(seeded, str) else 'uniform'}" if seeded else ""
        self._print(f"trial {trial.number:>3}: quality {a.quality:.2f} ({a.quality - q0:+.2f}) "
                    f"speedup {a.speedup:.2f}x{_bounds(a)} latency {a.latency_ms:.1f} ms size {a.size_mb:.1f} MB "
                    f"{flag}{sim} ({a.build_s + a.eval_s:.0f} s)")
        best_text = None
        if best is not None:
            b = TrialRecord.of(best)
            best_text = f"best feasible: #{best.number} {b.quality:.2f} @ {b.speedup:.2f}x"
        self._advance(best_text)

    def trial_rejected(self, number: int, reason: str) -> None:
        self._print(f"trial {number:>3}: skipped, {reason}")

    def trial_failed(self, number: int, reason: str) -> None:
        self._print(f"trial {number:>3}: FAILED {reason}")
        self._advance()


def _bounds(rec: TrialRecord) -> str:
    """The speedup's interval and rounds (searcher/devices/adaptive.py), when the latency was measured."""
    if rec.speedup_low is None:
        return ""
    return f" [{rec.speedup_low:.2f}, {rec.speedup_high:.2f}] ({rec.rounds} rounds)"
