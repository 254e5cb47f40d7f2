"""Optimizers and learning-rate schedules, chosen by name (training.optimizer,
training.schedule) from plain arguments."""

import keras
from keras import ops

from siamese_reid.errors import ReIDError


def _cosine_decay(peak, warmup_steps, total_steps, alpha):
    # Keras' own CosineDecay (with `warmup_target`), a function of the optimizer's step counter
    # only, so a resumed run continues exactly where the schedule left off. "constant" is the
    # same schedule with alpha=1: the decayed value is alpha x peak.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=alpha,
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


@keras.saving.register_keras_serializable(package="siamese_reid")
class WarmupMultiStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, times `gamma` for every milestone
    reached: rate(step) = peak x min(step / warmup_steps, 1) x gamma ^ #{m : step >= m}.

    The strong baseline's reference code (WarmupMultiStepLR) steps its rate once per epoch and
    warms up from 0.01 x peak; here the rate changes every step and warms up from 0, as the
    cosine schedule does, so the two schedules differ only in what follows the warm-up.

    Reference: Luo et al., Bag of Tricks, https://arxiv.org/abs/1903.07071 (milestones at
    epochs 40 and 70 of 120, gamma 0.1, 10 warm-up epochs).
    """

    def __init__(self, peak, warmup_steps, milestone_steps, gamma):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.milestone_steps = tuple(milestone_steps)
        self.gamma = gamma

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.minimum(step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0
        decays = sum((ops.cast(step >= milestone, "float32") for milestone in self.milestone_steps), 0.0)
        return self.peak * warmup * ops.power(self.gamma, decays)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "milestone_steps": list(self.milestone_steps),
            "gamma": self.gamma,
        }


# training.schedule -> builder(peak, warmup_steps, total_steps, milestone_steps, gamma)
SCHEDULES = {
    "cosine": lambda peak, warmup, total, milestones, gamma: _cosine_decay(peak, warmup, total, alpha=0.0),
    "constant": lambda peak, warmup, total, milestones, gamma: _cosine_decay(peak, warmup, total, alpha=1.0),
    "multistep": lambda peak, warmup, total, milestones, gamma: WarmupMultiStepDecay(peak, warmup, milestones, gamma),
}


def make_schedule(name, peak, warmup_steps, total_steps, milestone_steps=(), gamma=0.1):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0 at
    `total_steps` ("cosine"), `peak` held ("constant"), or `peak` multiplied by `gamma` at
    each of `milestone_steps` ("multistep"; the other schedules ignore the milestones).
    """
    if name not in SCHEDULES:
        raise ReIDError(f"unknown schedule {name!r}; valid names: {list(SCHEDULES)}")
    return SCHEDULES[name](peak, warmup_steps, total_steps, milestone_steps, gamma)


@keras.saving.register_keras_serializable(package="siamese_reid")
class AdamL2(keras.optimizers.Adam):
    """Adam with weight decay as an L2 penalty: `l2 x variable` is added to every gradient
    before the moment estimates, as torch.optim.Adam(weight_decay=...) does, which the strong
    baseline's reference code trains with (Keras' own `weight_decay` argument decays the
    weights directly instead, which is AdamW).

    Reference: Kingma and Ba, https://arxiv.org/abs/1412.6980; Loshchilov and Hutter
    (decoupled weight decay, and why the two differ), https://arxiv.org/abs/1711.05101
    """

    def __init__(self, learning_rate=0.001, l2=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(self.l2, variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


# training.optimizer -> builder(learning rate or schedule, weight decay)
OPTIMIZERS = {
    # weight decay as an L2 penalty in the gradient (the strong baseline's optimizer)
    "adam": lambda rate, weight_decay: AdamL2(rate, l2=weight_decay),
    # decoupled: each step shrinks the weights by learning rate x weight decay
    "adamw": lambda rate, weight_decay: keras.optimizers.AdamW(rate, weight_decay=weight_decay),
    "sgd": lambda rate, weight_decay: keras.optimizers.SGD(
        rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
    ),
}


def make_optimizer(name, learning_rate, weight_decay):
    """adam | adamw | sgd (momentum 0.9, Nesterov) with a rate or a schedule (`make_schedule`)."""
    if name not in OPTIMIZERS:
        raise ReIDError(f"unknown optimizer {name!r}; valid names: {list(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, weight_decay)
