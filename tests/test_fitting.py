"""One run's fit (siamese_reid.fitting): the failures a user can act on become one-line errors."""

import pytest

from siamese_reid.errors import ReIDError


def demo_settings(root):
    return [f"data.root={root}"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_model(tmp_path, tiny_demo, run_train, fast_settings):
    settings = (
        fast_settings
        + demo_settings(tiny_demo)
        + [
            "training.epochs=3",
            "training.steps_per_epoch=2",
            "training.identities_per_batch=4",
            "training.images_per_identity=2",
            "training.learning_rate=1e30",
            "training.warmup_epochs=0",
            "training.optimizer=sgd",
            "model.bnneck=false",
            "loss.distance_metric=squared-L2",
            "evaluation.every_n_epochs=0",
        ]
    )
    with pytest.raises(ReIDError) as caught:
        run_train(tmp_path, settings)
    assert "the loss became nan" in str(caught.value).lower() and "last good model" in str(caught.value)
