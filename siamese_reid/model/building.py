"""The models a config describes: the embedding tower, and the compiled model `fit` trains
around it (Siamese in triplet mode; the tower, or the P x K training model, in P x K mode).
"""

import dataclasses

import numpy as np


def image_size(config):
    """(height, width) of the images the config's model embeds."""
    return config.data.image_height, config.data.image_width


def build_tower(config):
    """The embedding tower the config describes."""
    from siamese_reid.model.embedding import build_embedding_model

    return build_embedding_model(config.model, image_size(config))


def model_to_fit(tower, config, num_identities):
    """The model `fit` trains around `tower`, and the loss section to compile it with."""
    from siamese_reid.model.siamese import build_siamese_model
    from siamese_reid.model.training_model import build_pk_training_model, needs_training_model

    loss = config.loss
    if config.training.sampler == "triplet":
        return build_siamese_model(tower, config.model.branches), dataclasses.replace(loss, name="triplet")
    if not needs_training_model(loss):
        return tower, loss
    if not num_identities:
        raise ValueError("the P x K training model needs num_identities (the training identities)")
    model = build_pk_training_model(
        tower,
        num_identities,
        loss.triplet_feature,
        id_loss=loss.id_weight > 0,
        center_loss=loss.center_weight > 0,
        stripe_id_loss=loss.stripe_id_weight > 0,
    )
    return model, loss


def build_training_model(config, steps, strategy, num_identities=None):
    """Tower, the compiled model `fit` trains, and the record of how it was initialised.

    In triplet mode the trained model is the Siamese model around the tower; in P x K mode it is
    the tower itself, or, when the loss section asks for an ID loss (on the embedding or per
    stripe), a center loss or the feature before the BNNeck, the training model of
    `build_pk_training_model` around it (feed it `fit_batches` of the P x K stream). Either way
    the tower's weights are the ones trained, and the tower is what checkpoints save.

    Args:
      num_identities: training identities (labels 0..N-1); needed by the training model only.
    """
    import keras

    from siamese_reid.model.training_model import compile_arguments
    from siamese_reid.optimizers import make_optimizer, make_schedule

    training = config.training
    schedule = make_schedule(
        training.schedule,
        training.learning_rate,
        training.warmup_epochs * steps,
        training.epochs * steps,
        [milestone * steps for milestone in training.lr_milestones],
        training.lr_gamma,
    )
    with strategy.scope():
        tower = build_tower(config)
        model, loss = model_to_fit(tower, config, num_identities)
        if strategy.num_replicas_in_sync > 1:
            from siamese_reid.distribution import synchronize_batch_norm

            # the model's, not only the tower's: the per-stripe heads' BatchNorms are outside it
            synchronize_batch_norm(model)
        model.compile(
            optimizer=make_optimizer(training.optimizer, schedule, training.weight_decay),
            **compile_arguments(loss, model),
            jit_compile=training.xla,
        )
    initialisation = {
        "backbone": config.model.backbone,
        "weights": config.model.weights,
        "parameters": int(tower.count_params()),
        "trainable_parameters": int(sum(np.prod(w.shape) for w in tower.trainable_weights)),
        "keras": keras.__version__,
    }
    return tower, model, initialisation
