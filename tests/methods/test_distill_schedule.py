"""The distillation learning-rate schedule: warm-up over the first 10% of the steps, then a
linear fall to 0, so a short recovery run ends on small steps instead of mid-trajectory."""

from __future__ import annotations

import pytest
from slimformer.methods.distill import lr_factor


@pytest.mark.parametrize("steps", [1, 3, 10, 100, 300])
def test_warm_up_then_linear_decay_to_zero(steps):
    f = [lr_factor(s, steps) for s in range(steps)]
    warm = max(1, steps // 10)
    assert f[warm - 1] == 1.0 and max(f) == 1.0
    assert all(a < b for a, b in zip(f[:warm - 1], f[1:warm]))  # rising during warm-up
    assert all(a > b for a, b in zip(f[warm - 1:], f[warm:]))  # then strictly falling
    assert f[-1] == pytest.approx(1.0 / (steps - warm + 1))  # the last step is the smallest, above 0


def test_first_step_of_a_long_run_is_small():
    assert lr_factor(0, 300) == pytest.approx(1 / 30)
    assert lr_factor(150, 300) == pytest.approx(150 / 271)
