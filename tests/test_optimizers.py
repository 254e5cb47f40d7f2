"""Optimizers and learning-rate schedules against their definitions.

Weight decay with Adam: `adam` adds it to the gradient as an L2 penalty (torch.optim.Adam, the
strong baseline's optimizer), `adamw` decays the weights directly (Loshchilov and Hutter); both
against NumPy loops written from the published update rules. The schedules (Keras' CosineDecay
with warm-up, the multistep schedule) against their formulas."""

import math

import keras
import numpy as np
import pytest

from siamese_reid.optimizers import OPTIMIZERS, AdamL2, make_optimizer, make_schedule

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7


def reference_adam(weights, gradient_of, learning_rate, steps, l2=0.0, decoupled=0.0):
    """Adam with an L2 term l2 * w in the gradient and/or the decoupled decay
    w <- w - learning_rate * decoupled * w before each step (AdamW).

    Adam in the form of Kingma and Ba's section 2 (the one Keras implements): step size
    lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), epsilon added to sqrt(v) (their "epsilon hat").
    """
    weights = weights.astype(np.float64).copy()
    first, second = np.zeros_like(weights), np.zeros_like(weights)
    for step in range(1, steps + 1):
        gradient = gradient_of(weights) + l2 * weights
        weights = weights - learning_rate * decoupled * weights
        first = BETA_1 * first + (1 - BETA_1) * gradient
        second = BETA_2 * second + (1 - BETA_2) * gradient**2
        step_size = learning_rate * np.sqrt(1 - BETA_2**step) / (1 - BETA_1**step)
        weights = weights - step_size * first / (np.sqrt(second) + EPSILON)
    return weights


def run_optimizer(optimizer, weights, gradient_of, steps):
    variable = keras.Variable(weights.astype(np.float32))
    for _ in range(steps):
        gradient = gradient_of(keras.ops.convert_to_numpy(variable).astype(np.float64)).astype(np.float32)
        optimizer.apply([gradient], [variable])
    return keras.ops.convert_to_numpy(variable)


START = np.array([[1.5, -2.0, 0.25], [0.5, 3.0, -1.0]])
TARGET = np.array([[1.0, -1.0, 0.0], [0.0, 2.0, -2.0]])


def quadratic(weights):
    return weights - TARGET  # gradient of 0.5 ||w - target||^2


def no_gradient(weights):
    return np.zeros_like(weights)


@pytest.mark.parametrize("gradient_of", [quadratic, no_gradient])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4, 0.1])
def test_adam_adds_weight_decay_to_the_gradient(gradient_of, weight_decay):
    got = run_optimizer(make_optimizer("adam", 0.01, weight_decay), START, gradient_of, 30)
    expected = reference_adam(START, gradient_of, 0.01, 30, l2=weight_decay)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # float32 vs float64
    if weight_decay and gradient_of is no_gradient:
        # with nothing else to learn, the weights shrink towards 0
        assert np.all(np.abs(got) < np.abs(START))


@pytest.mark.parametrize("gradient_of", [quadratic, no_gradient])
@pytest.mark.parametrize("weight_decay", [5e-4, 0.1])
def test_adamw_shrinks_the_weights_as_its_rule_says(gradient_of, weight_decay):
    got = run_optimizer(make_optimizer("adamw", 0.01, weight_decay), START, gradient_of, 30)
    expected = reference_adam(START, gradient_of, 0.01, 30, decoupled=weight_decay)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # float32 vs float64
    if gradient_of is no_gradient:
        # no gradient, no Adam step: each step multiplies the weights by 1 - lr x decay
        np.testing.assert_allclose(got, START * (1 - 0.01 * weight_decay) ** 30, rtol=1e-5)


def test_adam_without_weight_decay_is_keras_adam():
    # the default recipe (weight decay 0) trains exactly as Keras' own Adam
    ours = run_optimizer(make_optimizer("adam", 0.01, 0.0), START, quadratic, 20)
    stock = run_optimizer(keras.optimizers.Adam(0.01), START, quadratic, 20)
    np.testing.assert_array_equal(ours, stock)


def test_the_weight_decay_reaches_every_optimizer():
    # every optimizer, `adam` included, applies training.weight_decay
    for name in OPTIMIZERS:
        decayed = run_optimizer(make_optimizer(name, 0.01, 0.1), START, no_gradient, 5)
        assert np.all(np.abs(decayed) < np.abs(START)), name


def test_adam_l2_serialises():
    optimizer = AdamL2(learning_rate=0.002, l2=5e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is AdamL2 and restored.l2 == 5e-4
    assert restored.get_config() == optimizer.get_config()


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
    # Keras' CosineDecay equals the hand-written warm-up schedule from the end of warm-up on;
    # during warm-up its rate at step s is that schedule's at step s - 1 (it starts at 0).
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
