"""The one trial lifecycle step every backend shares: fail a cut-off trial, queue its plan again."""

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState
from slimformer.searcher.study.records import (
    FAIL_REASON,
    RETRIED,
    RETRY_OF,
    SEEDED,
    TRANSFERRED_QUALITY,
    counted,
    requeue,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
X, Y = IntDistribution(0, 9), IntDistribution(0, 9)


def _waiting(study):
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def test_a_cut_off_trial_is_failed_and_its_plan_queued_again():
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_int("x", 0, 9)
    trial.set_user_attr("host", "h")  # not a queued-with attribute: the retry does not carry it
    assert requeue(study, trial, "interrupted (Ctrl-C / SIGTERM)") is True
    failed = study.trials[trial.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs[FAIL_REASON] == "interrupted (Ctrl-C / SIGTERM)"
    assert failed.user_attrs[RETRIED] is True and not counted(failed)
    (retry,) = _waiting(study)
    assert retry.system_attrs["fixed_params"] == failed.params
    assert retry.user_attrs == {RETRY_OF: trial.number}


def test_a_queued_plan_is_queued_again_whole_with_its_attributes():
    """A seeded or transferred plan cut off halfway through sampling comes back whole, still
    seeded / transferred (before, only the stale-trial path kept `seeded`, and the Ctrl-C path
    queued only the parameters sampled so far)."""
    study = optuna.create_study()
    study.enqueue_trial({"x": 3, "y": 4}, user_attrs={SEEDED: True, TRANSFERRED_QUALITY: 81.5})
    trial = study.ask()
    assert trial.suggest_int("x", 0, 9) == 3  # y not sampled yet when it is cut off
    requeue(study, trial, "worker did not start")
    (retry,) = _waiting(study)
    assert retry.system_attrs["fixed_params"] == {"x": 3, "y": 4}
    assert retry.user_attrs == {SEEDED: True, TRANSFERRED_QUALITY: 81.5, RETRY_OF: trial.number}


def test_a_trial_without_a_plan_is_only_failed_and_counts():
    """Nothing to retry: not marked retried (before, the Ctrl-C and Ray paths marked it retried,
    so it counted neither as a failure nor through a retry)."""
    study = optuna.create_study()
    trial = study.ask()
    assert requeue(study, trial, "interrupted (the Ray run stopped)") is False
    failed = study.trials[trial.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs[RETRIED] is False and counted(failed)
    assert _waiting(study) == []


def test_a_frozen_trial_of_a_dead_process_is_requeued_the_same_way():
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, params={"x": 1, "y": 2},
                                              distributions={"x": X, "y": Y}))
    (frozen,) = study.get_trials(states=(TrialState.RUNNING,))
    assert requeue(study, frozen, "stale: its process died (killed or crashed)") is True
    assert study.trials[frozen.number].state == TrialState.FAIL
    (retry,) = _waiting(study)
    assert retry.system_attrs["fixed_params"] == {"x": 1, "y": 2} and retry.user_attrs[RETRY_OF] == frozen.number


def test_the_prescreen_limit_is_the_budgets_speedup_target():
    """One budget arithmetic: the cost-model pre-screen's latency limit is the baseline over
    `Budget.target` (what the timing and the re-timing hold candidates to)."""
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.study.budget import Budget

    baseline = {"latency_ms": 23.7}

    def limit(budget):
        return Budget.from_section(load_study_config(data={"budget": budget}).budget).latency_limit(baseline["latency_ms"])

    assert limit({"latency_ms": 10.0}) == pytest.approx(10.0)
    assert limit({"speedup": 2.0}) == pytest.approx(11.85)
    assert limit({}) is None
    assert Budget.from_section(load_study_config(data={"budget": {"latency_ms": 10.0}}).budget).target(23.7) == pytest.approx(2.37)
