"""Rules that involve more than one config key, checked once a config is built. Rules of one
builder's arguments (last_stride, freeze_blocks, a soft semi-hard loss) live in that builder,
which a Python caller reaches too."""

from siamese_reid.errors import ReIDError


def check_consistency(config):
    """Rules that involve more than one key."""
    if config.model.embedding_dim == 1:
        raise ReIDError(
            "config key 'model.embedding_dim' must be 0 (no projection: the pooled backbone feature) or at least 2, "
            "got 1 (a unit-length 1-d embedding is only a sign)"
        )
    if not config.evaluation.score_test and config.data.validation_fraction == 0:
        raise ReIDError(
            "config key 'evaluation.score_test' false needs a validation split to report on instead: "
            "set data.validation_fraction above 0"
        )
    _check_recipe(config.model, config.loss, config.training)


def _check_recipe(model, loss, training):
    """The strong-baseline switches: what each needs from the others."""
    if training.sampler == "triplet":
        for key, used in (
            ("loss.triplet_weight", loss.triplet_weight != 1),
            ("loss.id_weight", loss.id_weight > 0),
            ("loss.center_weight", loss.center_weight > 0),
            ("loss.stripe_id_weight", loss.stripe_id_weight > 0),
            ("loss.triplet_feature", loss.triplet_feature != "embedding"),
        ):
            if used:
                raise ReIDError(
                    f"config key '{key}' needs 'training.sampler: pk': the triplet sampler trains the triplet "
                    "loss on the embedding only"
                )
    if loss.triplet_weight == 0 and loss.id_weight == 0 and loss.stripe_id_weight == 0:
        raise ReIDError(
            "config keys 'loss.triplet_weight', 'loss.id_weight' and 'loss.stripe_id_weight' are all 0: "
            "set one of them above 0"
        )
    if loss.stripe_id_weight > 0 and model.stripes < 2:
        raise ReIDError(
            f"config key 'loss.stripe_id_weight' needs 'model.stripes' of 2 or more, got {model.stripes}: "
            "it trains one classifier per horizontal stripe"
        )
    if loss.triplet_feature == "pre_bnneck" and not model.bnneck:
        raise ReIDError("config key 'loss.triplet_feature' 'pre_bnneck' needs 'model.bnneck: true'")
    milestones = training.lr_milestones
    if any(later <= earlier for earlier, later in zip(milestones, milestones[1:], strict=False)):
        raise ReIDError(f"config key 'training.lr_milestones' must be increasing epochs, got {list(milestones)}")
