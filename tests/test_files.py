"""Files are written whole: a full disk or a crash never leaves a truncated file."""

import errno
import json

import numpy as np
import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.files import write_atomically, write_json


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"mAP": 0.5})

    def fills_the_disk(path):
        path.write_bytes(b"x" * 3 * 2**20)  # 3 MiB reached the disk, then it was full
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ReIDError) as caught:
        write_atomically(target, fills_the_disk)
    message = str(caught.value)
    assert f"no space left on the device to write '{target}'" in message and "3.0 MiB" in message
    assert "\n" not in message
    assert target.read_text() == '{\n  "mAP": 0.5\n}\n'  # the previous good file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "q.npy"
    np.save(target, np.arange(3))

    def interrupted(path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["q.npy"]


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
    # Keras' BackupAndRestore overwrote latest.weights.h5 in place: a kill during a save left a
    # truncated file no resume could open.
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
