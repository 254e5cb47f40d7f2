"""Reading torch.save files without PyTorch: values, layouts, torchreid's conventions, refusals.

The fixtures in tests/fixtures/torchreid/ were written by torch.save itself
(tools/make_torchreid_checkpoints.py); the expected values beside them are PyTorch's own
`tensor.numpy()`.
"""

import collections
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.model.pytorch_file import LEGACY_MAGIC_NUMBER, read_torch_file
from siamese_reid.model.torchreid_checkpoint import guess_architecture, looks_like_torch_file, read_torchreid_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torchreid"
LAYOUTS = ("zip", "legacy")


def expected(name):
    with np.load(FIXTURES / f"{name}_expected.npz") as stored:
        return {key: stored[key] for key in stored.files}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_bare_state_dict_reads_as_pytorch_saved_it(layout):
    state_dict = read_torch_file(FIXTURES / f"tiny_state_dict_{layout}.pth")
    reference = expected("tiny_state_dict")
    assert list(state_dict) == list(reference)  # the OrderedDict's order is kept
    for name, values in reference.items():
        assert state_dict[name].dtype == values.dtype, name
        assert state_dict[name].shape == values.shape, name
        np.testing.assert_array_equal(state_dict[name], values, err_msg=name)
    # the types that matter, spelled out: float16 stays float16, bfloat16 becomes float32,
    # BatchNorm's counter is int64, and a slice at an offset of a shared storage is right
    assert state_dict["extra.half"].dtype == np.float16
    assert state_dict["extra.bfloat16"].dtype == np.float32
    assert state_dict["bn1.num_batches_tracked"].dtype == np.int64
    shared = np.arange(40, dtype=np.float32).reshape(5, 8)
    np.testing.assert_array_equal(state_dict["extra.strided"], shared[1:, 1::3])
    np.testing.assert_array_equal(state_dict["extra.transposed"], shared.T)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_torchreid_checkpoint_dict_gives_its_state_dict_without_prefix_and_classifier(layout):
    weights = read_torchreid_weights(FIXTURES / f"tiny_checkpoint_{layout}.pth.tar-3")
    reference = expected("tiny_checkpoint")
    assert weights.epoch == 3
    assert weights.num_classes == 6
    assert sorted(weights.state_dict) == sorted(name for name in reference if not name.startswith("classifier."))
    for name, values in weights.state_dict.items():
        np.testing.assert_array_equal(values, reference[name], err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_rest_of_a_torchreid_checkpoint_reads_as_plain_values(layout):
    saved = read_torch_file(FIXTURES / f"tiny_checkpoint_{layout}.pth.tar-3")
    assert all(name.startswith("module.") for name in saved["state_dict"])
    assert saved["rank1"] == np.float32(0.625) and saved["rank1"].dtype == np.float32
    assert dict(saved["scheduler"]["milestones"]) == {20: 1, 40: 1}
    adam_state = saved["optimizer"]["state"][0]
    assert adam_state["exp_avg"].shape == saved["state_dict"]["module.conv1.weight"].shape


def test_an_imagenet_backbone_loses_its_1000_way_classifier():
    weights = read_torchreid_weights(FIXTURES / "tiny_state_dict_zip.pth")
    assert weights.num_classes == 1000
    assert weights.epoch is None
    assert not any(name.startswith("classifier.") for name in weights.state_dict)
    assert "fc.weight" in weights.state_dict


def test_an_osnet_checkpoint_is_recognised_by_its_names_and_width():
    weights = read_torchreid_weights(FIXTURES / "osnet_x0_25_checkpoint.pth.tar-1")
    assert guess_architecture(weights.state_dict) == "osnet_x0_25"
    assert weights.num_classes == 8
    assert weights.state_dict["conv1.conv.weight"].shape == (16, 3, 7, 7)


def test_each_torchreid_osnet_is_recognised_from_its_state_dict():
    # names and shapes of torchreid 0.2.5's six OSNet state dicts (tests/test_osnet.py's fixture)
    structure = json.loads((FIXTURES.parent / "torchreid_osnet" / "structure.json").read_text())
    variants = [name for name in structure if name.startswith("osnet")]
    assert len(variants) == 6
    for variant in variants:
        shapes = structure[variant]["state_dict"]
        state_dict = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        assert guess_architecture(state_dict) == variant


def test_other_networks_are_described():
    resnet = {"conv1.weight": np.zeros((64, 3, 7, 7)), "layer4.0.conv1.weight": np.zeros(1)}
    assert guess_architecture(resnet) == "a ResNet"
    assert guess_architecture({"something.weight": np.zeros(1)}) is None


# ---------------------------------------------------------------------------------------------
# Files that must be refused


class _RunsShellCommand:
    """Pickles as a call to os.system(command): what a malicious .pth does on torch.load."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _legacy_file(payload_pickle):
    """A legacy torch.save header (magic number, protocol, system facts) followed by `payload_pickle`."""
    header = io.BytesIO()
    for value in (LEGACY_MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(value, header, protocol=2)
    return header.getvalue() + payload_pickle


def _zip_file(path, payload_pickle):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload_pickle)
        archive.writestr("archive/byteorder", "little")
    return path


@pytest.mark.parametrize("wrapping", ["plain pickle", "legacy", "zip"])
def test_a_pickle_that_runs_a_command_is_refused_without_running_it(tmp_path, wrapping):
    marker = tmp_path / "marker"
    payload = pickle.dumps({"state_dict": _RunsShellCommand(f"touch {marker}")}, protocol=2)
    # the payload is real: plain unpickling runs the command
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "model.pth"
    if wrapping == "zip":
        _zip_file(path, payload)
    else:
        path.write_bytes(payload if wrapping == "plain pickle" else _legacy_file(payload))
    with pytest.raises(ReIDError, match=r"asks to call (posix|os|nt)\.system .*refused without running it"):
        read_torchreid_weights(path)
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused_with_a_hint(tmp_path):
    # GLOBAL torch.nn.modules.container.Sequential, EMPTY_TUPLE, NEWOBJ, STOP: torch.save(model)
    payload = b"\x80\x02ctorch.nn.modules.container\nSequential\nq\x00)\x81q\x01."
    path = _zip_file(tmp_path / "whole_model.pth", payload)
    expected = r"whole pickled model \(torch\.nn\.modules\.container\.Sequential\).*state_dict"
    with pytest.raises(ReIDError, match=expected):
        read_torch_file(path)


def test_a_pickle_cannot_change_an_allowed_class_for_the_rest_of_the_process(tmp_path):
    # GLOBAL collections.Counter, then BUILD with the state (None, {"most_common": 1}): pickle
    # sets the attribute on whatever the global lookup returned
    payload = b"\x80\x02ccollections\nCounter\nN}X\x0b\x00\x00\x00most_commonK\x01s\x86b."
    path = _zip_file(tmp_path / "poison.pth", payload)
    with pytest.raises(ReIDError):
        read_torch_file(path)
    assert collections.Counter("aab").most_common(1) == [("a", 2)]


def test_a_pickle_nested_too_deeply_is_one_error(tmp_path):
    depth = 50_000  # lists in lists: EMPTY_LIST n times, then APPEND n - 1 times
    path = _zip_file(tmp_path / "deep.pth", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    with pytest.raises(ReIDError, match="nested too deeply"):
        read_torch_file(path)


def test_a_torchscript_file_is_refused_as_one(tmp_path):
    # torch.jit.save's archive: data.pkl names the scripted module's class under __torch__
    payload = b"\x80\x02c__torch__.torch.nn.modules.container\nSequential\nq\x00)\x81q\x01."
    path = _zip_file(tmp_path / "scripted.pt", payload)
    with pytest.raises(ReIDError, match=r"is a TorchScript model \(torch\.jit\.save\), not a state dict"):
        read_torch_file(path)


@pytest.mark.parametrize(
    "name, fraction",
    [
        ("tiny_state_dict_zip.pth", 0.5),
        ("tiny_state_dict_zip.pth", 0.99),
        ("tiny_state_dict_legacy.pth", 0.05),  # inside the pickled object
        ("tiny_state_dict_legacy.pth", 0.5),  # inside the storages
        ("tiny_checkpoint_legacy.pth.tar-3", 0.999),
    ],
)
def test_a_truncated_file_is_said_to_be_cut_short(tmp_path, name, fraction):
    content = (FIXTURES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(content[: int(len(content) * fraction)])
    with pytest.raises(ReIDError, match="is cut short"):
        read_torchreid_weights(path)


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ReIDError, match="is not a PyTorch checkpoint"):
        read_torchreid_weights(text)
    keras_like = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_like, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ReIDError, match="zip archive but not a torch.save checkpoint"):
        read_torchreid_weights(keras_like)
    with pytest.raises(ReIDError, match="does not exist"):
        read_torchreid_weights(tmp_path / "missing.pth")


def test_a_big_endian_file_is_refused_rather_than_read_as_little_endian(tmp_path):
    path = tmp_path / "big.pth"
    with zipfile.ZipFile(FIXTURES / "tiny_state_dict_zip.pth") as source, zipfile.ZipFile(path, "w") as copy:
        for name in source.namelist():
            copy.writestr(name, b"big" if name.endswith("/byteorder") else source.read(name))
    with pytest.raises(ReIDError, match="byte order 'big'; only little-endian files are read"):
        read_torch_file(path)


def test_a_torch_file_without_a_state_dict_says_what_it_holds(tmp_path):
    path = _zip_file(tmp_path / "results.pth", pickle.dumps({"epoch": 3, "rank1": 0.5}, protocol=2))
    with pytest.raises(ReIDError, match=r"not a state dict: its entry 'epoch' is a int"):
        read_torchreid_weights(path)
    path = _zip_file(tmp_path / "list.pth", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ReIDError, match="holds a list, not a state dict"):
        read_torchreid_weights(path)


def test_torch_files_are_told_from_keras_files(tmp_path):
    assert looks_like_torch_file("osnet_x1_0_imagenet.pth")
    assert looks_like_torch_file("log/model.pth.tar-60")
    assert not looks_like_torch_file("backbone.weights.h5")
    # by content when the name says nothing
    unnamed = tmp_path / "checkpoint"
    unnamed.write_bytes((FIXTURES / "tiny_state_dict_legacy.pth").read_bytes())
    assert looks_like_torch_file(unnamed)
    unnamed.write_bytes((FIXTURES / "tiny_state_dict_zip.pth").read_bytes())
    assert looks_like_torch_file(unnamed)
    unnamed.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert not looks_like_torch_file(unnamed)
