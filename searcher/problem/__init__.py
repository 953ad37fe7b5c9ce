"""The problem a study poses: the task, its data, the model and the workbench that builds,
scores and times a candidate.

tasks (task heads and metrics), data (rows from files and built-in sources), models (where a
model comes from: folders, aliases, the hub, registered sources such as `recipe:`), recipes
(small models trained here once and cached), corpus (the distillation corpus of `finish`), workbench.

Imports: devices, config, errors, methods. Never imports: optuna. (A problem knows nothing of
studies or search.)
"""

from .models import RECIPE_PREFIX, register_source


def _recipe_source(spec: str):
    from .recipes import model_source  # on first use: recipes loads pydantic models and training code

    return model_source(spec)


register_source(RECIPE_PREFIX, _recipe_source)
