"""Files are written whole: a full disk or a crash never leaves a truncated file."""

import errno

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
