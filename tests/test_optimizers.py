"""Weight decay with Adam: `adam` adds it to the gradient as an L2 penalty (torch.optim.Adam, the
strong baseline's optimizer), `adamw` decays the weights directly (Loshchilov and Hutter); both
against NumPy loops written from the published update rules."""

import keras
import numpy as np
import pytest

from siamese_reid.optimizers import OPTIMIZERS, AdamL2, make_optimizer

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
    # today's default recipe (weight decay 0) trains exactly as before the fix
    ours = run_optimizer(make_optimizer("adam", 0.01, 0.0), START, quadratic, 20)
    stock = run_optimizer(keras.optimizers.Adam(0.01), START, quadratic, 20)
    np.testing.assert_array_equal(ours, stock)


def test_the_weight_decay_reaches_every_optimizer():
    # the bug this replaces: `adam` ignored training.weight_decay
    for name in OPTIMIZERS:
        decayed = run_optimizer(make_optimizer(name, 0.01, 0.1), START, no_gradient, 5)
        assert np.all(np.abs(decayed) < np.abs(START)), name


def test_adam_l2_serialises():
    optimizer = AdamL2(learning_rate=0.002, l2=5e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is AdamL2 and restored.l2 == 5e-4
    assert restored.get_config() == optimizer.get_config()
