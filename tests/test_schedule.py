"""The learning-rate schedule (Keras' CosineDecay with warm-up) against its definition."""

import math

import numpy as np
import pytest

from siamese_reid.training import make_schedule


def reference(step, peak, warmup_steps, total_steps, constant):
    """Linear warm-up from 0 to the peak over warmup_steps, then cosine to 0 at total_steps
    (or the peak held)."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    if constant:
        return peak
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(("warmup_steps", "total_steps"), [(0, 50), (10, 50), (25, 26)])
@pytest.mark.parametrize("name", ["cosine", "constant"])
def test_schedule_follows_its_definition(name, warmup_steps, total_steps):
    schedule = make_schedule(name, 3e-4, warmup_steps, total_steps)
    for step in range(total_steps + 5):
        expected = reference(step, 3e-4, warmup_steps, total_steps, name == "constant")
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-5 * 3e-4), step
    assert float(schedule(total_steps)) == pytest.approx(0.0 if name == "cosine" else 3e-4, abs=1e-9)


def previous_warmup_schedule(step, peak, warmup_steps, total_steps):
    """The hand-written WarmupSchedule this project used before Keras' CosineDecay."""
    warm = peak * min((step + 1) / max(warmup_steps, 1), 1.0)
    if step < warmup_steps:
        return warm
    progress = min(max((step - warmup_steps) / (total_steps - warmup_steps), 0.0), 1.0)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def test_keras_schedule_equals_the_previous_one_after_warm_up_and_lags_it_one_step_during():
    # The reason the swap is acceptable: identical from the end of warm-up on; during warm-up
    # Keras' rate at step s is the old one's at step s - 1 (it starts at 0).
    schedule = make_schedule("cosine", 3e-4, 10, 60)
    for step in range(70):
        old = previous_warmup_schedule(step, 3e-4, 10, 60)
        if step >= 10:
            assert float(schedule(step)) == pytest.approx(old, rel=1e-5, abs=3e-9)
        else:
            lagged = previous_warmup_schedule(step - 1, 3e-4, 10, 60) if step else 0.0
            assert float(schedule(step)) == pytest.approx(lagged, rel=1e-5, abs=3e-9)


def test_schedule_is_a_function_of_the_step_only():
    # what makes --resume exact: the same step gives the same rate in a new object
    first, second = make_schedule("cosine", 1e-3, 5, 40), make_schedule("cosine", 1e-3, 5, 40)
    steps = np.arange(45)
    np.testing.assert_array_equal([float(first(s)) for s in steps], [float(second(s)) for s in steps])
