"""What a run saves while it trains (siamese_reid.checkpoints): the tower and the backup are
written whole, best.keras follows a mAP, and a NaN loss leaves the last good ones on disk."""

import errno
import json

import numpy as np
import pytest

from siamese_reid.errors import ReIDError


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint_and_backup(tmp_path):
    import keras
    import tensorflow as tf

    from siamese_reid.checkpoints import EmbeddingCheckpoint
    from siamese_reid.training import NonFiniteLossError, StopOnNonFiniteLoss

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.UnitNormalization()])
    model.compile(optimizer="adam", loss="mse")
    inputs = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    poisoned = inputs.copy()
    poisoned[0, 0] = np.nan  # epoch 2 sees a NaN input: its loss is NaN
    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate([inputs, poisoned]), np.zeros((16, 3)))).batch(8)
    callbacks = [
        StopOnNonFiniteLoss(),
        EmbeddingCheckpoint(model, tmp_path),
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
    ]
    with pytest.raises(NonFiniteLossError, match="epoch 2, batch 1"):
        model.fit(dataset, epochs=2, steps_per_epoch=1, callbacks=callbacks, verbose=0, shuffle=False)
    saved = keras.saving.load_model(tmp_path / "last.keras")
    assert all(np.isfinite(w).all() for w in saved.get_weights())  # the epoch-1 model, not NaN
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1


def test_the_best_checkpoint_is_chosen_on_a_map_only(tmp_path):
    import keras

    from siamese_reid.checkpoints import EmbeddingCheckpoint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="monitor must be a mAP"):
        EmbeddingCheckpoint(model, tmp_path, monitor="loss")
    checkpoint = EmbeddingCheckpoint(model, tmp_path, monitor="test_mAP")
    for epoch, value in enumerate((0.2, 0.5, 0.4)):
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "test_mAP": value})
    assert json.loads((tmp_path / "best.json").read_text()) == {"test_mAP": 0.5, "epoch": 2}


def test_a_checkpoint_is_written_whole(tmp_path, monkeypatch):
    import keras

    from siamese_reid.checkpoints import EmbeddingCheckpoint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    checkpoint = EmbeddingCheckpoint(model, tmp_path)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    good = (tmp_path / "last.keras").read_bytes()

    def disk_full(path):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half a model")  # a partial file reached the disk first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.saved_view, "save", disk_full)
    with pytest.raises(ReIDError, match="last.keras"):
        checkpoint.on_epoch_end(1, {"loss": 0.5})
    assert (tmp_path / "last.keras").read_bytes() == good


def test_the_training_backup_is_written_whole(tmp_path, monkeypatch):
    # Keras' BackupAndRestore writes latest.weights.h5 in place; a kill during a save must leave
    # the previous backup whole, for a resume to open.
    import keras

    from siamese_reid.checkpoints import AtomicBackupAndRestore

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    backup = AtomicBackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup._current_epoch, backup._last_batch_seen = 1, 0
    backup._save_model()
    good = (tmp_path / "backup" / "latest.weights.h5").read_bytes()

    def killed_while_writing(path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x89HDF half a file")
        raise KeyboardInterrupt  # the process stops in the middle of the write

    monkeypatch.setattr(model, "save_weights", killed_while_writing)
    backup._current_epoch = 2
    with pytest.raises(KeyboardInterrupt):
        backup._save_model()
    assert (tmp_path / "backup" / "latest.weights.h5").read_bytes() == good
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["latest.weights.h5", "training_metadata.json"]
