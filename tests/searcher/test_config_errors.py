"""Study-file errors and space errors come from one formatter (slimformer.spaces.format_validation_error)."""

import pytest
from slimformer.searcher.config import load_study_config
from slimformer.searcher.errors import UserError


@pytest.mark.parametrize("data, line", [
    # unknown keys: the key named, the closest allowed one, then what is allowed (never the internal `path`)
    ({"budgte": {}}, "study: budgte: unknown key 'budgte'; did you mean 'budget'? (allowed: model, task, data, device, "
                     "budget, space, search, transfer)"),
    ({"search": {"trails": 3}}, "study: search.trails: unknown key 'trails'; did you mean 'trials'?"),
    ({"space": {"heds": [4]}}, "study: space.heds: unknown key 'heds'; did you mean 'heads'?"),
    # a wrong literal: what is allowed and what was given (the study file used to say ", got ...")
    ({"task": {"type": "regression"}}, "study: task.type: must be 'sentence-similarity', 'text-classification', "
                                       "'causal-lm' or 'image-classification' (got 'regression')"),
    ({"task": {"type": "causal_lm"}}, "study: task.type: must be 'sentence-similarity', 'text-classification', "
                                      "'causal-lm' or 'image-classification' (got 'causal_lm'); did you mean 'causal-lm'?"),
    ({"device": {"threads": 0}}, "study: device.threads: must be greater than or equal to 1 (got 0)"),
])
def test_study_file_errors_use_the_one_formatter(data, line):
    with pytest.raises(UserError) as info:
        load_study_config(data=data)
    assert str(info.value).startswith(line), str(info.value)


def test_task_names_are_written_once():
    """config.TASK_FIELDS names the tasks (the study file's task.type, the data columns); the
    task implementations answer to exactly those names."""
    from slimformer.searcher.config import TASK_FIELDS, TASKS
    from slimformer.searcher.problem import tasks

    assert TASKS == tuple(TASK_FIELDS)
    assert sorted(cls.name for cls in tasks.Task.__subclasses__()) == sorted(TASKS)
