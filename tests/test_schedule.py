"""The learning-rate schedule (Keras' CosineDecay with warm-up) against its definition."""

import math

import numpy as np
import pytest

from siamese_reid.optimizers import make_schedule


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


def reference_multistep(step, peak, warmup_steps, milestone_steps, gamma):
    """Linear warm-up from 0 to the peak, times gamma for every milestone reached."""
    rate = peak * (min(step / warmup_steps, 1.0) if warmup_steps else 1.0)
    for milestone in milestone_steps:
        if step >= milestone:
            rate *= gamma
    return rate


@pytest.mark.parametrize(("warmup_steps", "milestones"), [(0, [40, 70]), (10, [40, 70]), (10, [5, 30]), (4, [])])
def test_multistep_schedule_follows_its_definition(warmup_steps, milestones):
    schedule = make_schedule("multistep", 3.5e-4, warmup_steps, 100, milestones, 0.1)
    for step in range(110):
        expected = reference_multistep(step, 3.5e-4, warmup_steps, milestones, 0.1)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12), step


def test_multistep_schedule_at_the_milestones_with_warm_up():
    # the strong baseline's shape: 10 warm-up epochs, milestones at epochs 40 and 70, gamma 0.1;
    # here 3 steps per epoch, as model.building.build_training_model converts epochs to steps
    steps = 3
    schedule = make_schedule("multistep", 3.5e-4, 10 * steps, 120 * steps, [40 * steps, 70 * steps], 0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5 * steps)) == pytest.approx(3.5e-4 / 2)  # half way through the warm-up
    assert float(schedule(10 * steps)) == pytest.approx(3.5e-4)
    assert float(schedule(40 * steps - 1)) == pytest.approx(3.5e-4)  # the last step of epoch 40
    assert float(schedule(40 * steps)) == pytest.approx(3.5e-5)  # the first step of epoch 41
    assert float(schedule(70 * steps - 1)) == pytest.approx(3.5e-5)
    assert float(schedule(70 * steps)) == pytest.approx(3.5e-6)
    assert float(schedule(120 * steps)) == pytest.approx(3.5e-6)


def test_multistep_schedule_serialises():
    import keras

    schedule = make_schedule("multistep", 1e-3, 5, 50, [20, 30], 0.5)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert [float(restored(s)) for s in range(50)] == [float(schedule(s)) for s in range(50)]


def test_unknown_schedule_lists_the_valid_names():
    from siamese_reid.errors import ReIDError

    with pytest.raises(ReIDError, match=r"valid names: \['cosine', 'constant', 'multistep'\]"):
        make_schedule("step", 1e-3, 0, 10)
