"""A torchreid checkpoint used without training: imported to a run folder, exported, searched.

The checkpoint is tests/fixtures/torchreid/osnet_x0_25_checkpoint.pth.tar-1, written by
torch.save from torchreid's own osnet_x0_25 (tools/make_torchreid_checkpoints.py); beside it,
the features torchreid computed for three images. No test here needs PyTorch.
"""

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from siamese_reid.config import ModelConfig
from siamese_reid.errors import ReIDError
from siamese_reid.export import INPUT_NAME, OUTPUT_NAME, export_model
from siamese_reid.model import torchreid_checkpoint
from siamese_reid.model.embedding import build_embedding_model, load_embedding_model
from siamese_reid.pretrained import TORCHREID_IMAGE_SIZE, ValidationData, import_torchreid_checkpoint
from siamese_reid.search import search_images, update_index

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torchreid"
CHECKPOINT = FIXTURES / "osnet_x0_25_checkpoint.pth.tar-1"


def torchreid_reference():
    """Three uint8 RGB images [3, 256, 128, 3] and torchreid's 512-d features of them, L2-normalised."""
    with np.load(FIXTURES / "osnet_x0_25_expected.npz") as stored:
        images, features = stored["images"], stored["features"]
    return images, features / np.linalg.norm(features, axis=1, keepdims=True)


def save_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.slow  # about a minute and a half on two busy cores: SavedModel export and four traces of OSNet
def test_a_torchreid_checkpoint_is_imported_exported_indexed_and_searched(tmp_path, tiny_demo):
    images, torchreid_features = torchreid_reference()
    run_dir = tmp_path / "runs" / "osnet"
    result = import_torchreid_checkpoint(CHECKPOINT, "osnet_x0_25", run_dir, ValidationData(root=str(tiny_demo)))

    # the run folder export.py, search.py and evaluate.py read, with a fitted threshold
    assert {"config.yaml", "last.keras", "run_info.json", "threshold.json"} <= {p.name for p in run_dir.iterdir()}
    assert (result.num_classes, result.epoch) == (8, 1)
    assert result.threshold["split"] == "validation" and result.threshold["value"] > 0

    # the saved tower gives torchreid's features: RGB in [0, 255] in, normalisation inside
    tower = load_embedding_model(run_dir / "last.keras")
    assert tower.input_shape[1:3] == TORCHREID_IMAGE_SIZE and tower.output_shape[-1] == 512
    np.testing.assert_allclose(tower.predict(images.astype("float32"), verbose=0), torchreid_features, atol=2e-5)

    # exported as a SavedModel, the same
    import tensorflow as tf

    serve = tf.saved_model.load(str(export_model(tower, "savedmodel", tmp_path / "savedmodel")))
    exported = serve.signatures["serving_default"](**{INPUT_NAME: tf.constant(images.astype("float32"))})
    np.testing.assert_allclose(exported[OUTPUT_NAME].numpy(), torchreid_features, atol=2e-5)

    # indexed and searched: a slightly noisy copy of one gallery image finds it first
    gallery = [
        save_png(image, tmp_path / "gallery" / f"person_{name}.png") for image, name in zip(images, "abc", strict=True)
    ]
    summary = update_index(run_dir, [tmp_path / "gallery"], tmp_path / "index")
    assert summary.added == 3
    noise = np.random.default_rng(0).integers(-3, 4, size=images[1].shape)
    query = save_png(np.clip(images[1].astype(int) + noise, 0, 255).astype(np.uint8), tmp_path / "query.png")
    answers, errors = search_images(tmp_path / "index", [query], top_k=3)
    assert not errors
    assert Path(answers[0].results[0].path).name == gallery[1].name
    assert answers[0].results[0].distance < 0.05 < answers[0].results[1].distance
    assert answers[0].match  # the run's fitted threshold.json


def test_model_weights_may_name_a_torchreid_checkpoint(tmp_path):
    # a training config: torchreid's backbone and fc layer loaded, this package's projection on top
    model = ModelConfig(
        backbone="osnet_x0_25", weights=str(CHECKPOINT), stripes=1, feature_layer="torchreid", embedding_dim=32
    )
    tower = build_embedding_model(model, (64, 32))
    state_dict = torchreid_checkpoint.read_torchreid_weights(CHECKPOINT).state_dict
    backbone = tower.get_layer("osnet_x0_25")
    stem_kernel = backbone.get_layer("conv1.conv").get_weights()[0]
    np.testing.assert_array_equal(stem_kernel, state_dict["conv1.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(tower.get_layer("feature_bn").get_weights()[3], state_dict["fc.1.running_var"])

    with pytest.raises(ReIDError, match="load into torchreid's OSNet backbones .*not vgg16"):
        build_embedding_model(ModelConfig(backbone="vgg16", weights=str(CHECKPOINT)), (64, 32))


def test_a_checkpoint_of_another_architecture_is_named_and_nothing_is_created(tmp_path):
    with pytest.raises(ReIDError, match=r"is a torchreid osnet_x0_25 checkpoint, not osnet_x0_5: use osnet_x0_25"):
        import_torchreid_checkpoint(CHECKPOINT, "osnet_x0_5", tmp_path / "run")
    with pytest.raises(ReIDError, match=r"holds another network \(tensors conv1.weight, .*not torchreid's osnet_x0_25"):
        import_torchreid_checkpoint(FIXTURES / "tiny_state_dict_zip.pth", "osnet_x0_25", tmp_path / "run")
    with pytest.raises(ReIDError, match=r"unknown architecture 'resnet50'"):
        import_torchreid_checkpoint(CHECKPOINT, "resnet50", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_and_unexpected_tensors_are_named(tmp_path, monkeypatch):
    weights = torchreid_checkpoint.read_torchreid_weights(CHECKPOINT)
    state_dict = dict(weights.state_dict)
    state_dict.pop("conv5.bn.running_var")
    state_dict["conv5.extra.weight"] = np.zeros(3, np.float32)
    edited = torchreid_checkpoint.TorchreidWeights(state_dict, weights.num_classes, weights.epoch, weights.path)
    monkeypatch.setattr(torchreid_checkpoint, "read_torchreid_weights", lambda path: edited)
    model = ModelConfig(backbone="osnet_x0_25", weights="none", stripes=1, feature_layer="torchreid", embedding_dim=0)
    tower = build_embedding_model(model, (64, 32))
    expected = r"does not fit osnet_x0_25: .*missing keys: conv5.bn.running_var.*unexpected keys: conv5.extra.weight"
    with pytest.raises(ReIDError, match=expected):
        torchreid_checkpoint.load_torchreid_checkpoint(tower, CHECKPOINT, "osnet_x0_25")


def test_an_existing_folder_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mine.txt").write_text("keep me")
    with pytest.raises(ReIDError, match="already exists"):
        import_torchreid_checkpoint(CHECKPOINT, "osnet_x0_25", run_dir)
    assert [p.name for p in run_dir.iterdir()] == ["mine.txt"]


def test_a_failing_validation_split_leaves_no_folder(tmp_path):
    empty = tmp_path / "empty"
    for split in ("query", "bounding_box_test"):
        (empty / split).mkdir(parents=True)
    with pytest.raises(ReIDError):
        import_torchreid_checkpoint(CHECKPOINT, "osnet_x0_25", tmp_path / "run", ValidationData(root=str(empty)))
    assert not (tmp_path / "run").exists()


def run_import(*arguments, cwd):
    command = [sys.executable, "-m", "siamese_reid.import_torchreid", *map(str, arguments)]
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240, env=environment)


class _RunsShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_the_command_line_gives_one_line_and_a_non_zero_status(tmp_path):
    marker = tmp_path / "marker"
    malicious = tmp_path / "model.pth"
    with zipfile.ZipFile(malicious, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_RunsShellCommand(f"touch {marker}"), protocol=2))
    result = run_import(malicious, "--arch", "osnet_x0_25", "--output", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: '{malicious}' asks to call posix.system while loading: refused without running it (a checkpoint "
        "holds only tensors and plain values; this file is something else)"
    ]
    assert not marker.exists() and not (tmp_path / "run").exists()

    (tmp_path / "taken").mkdir()
    result = run_import(CHECKPOINT, "--arch", "osnet_x0_25", "--output", tmp_path / "taken", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: '{tmp_path / 'taken'}' already exists: choose another --output (nothing was changed)"
    ]


def test_the_command_line_imports(tmp_path):
    result = run_import(CHECKPOINT, "--arch", "osnet_x0_25", "--output", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "8-class classifier dropped" in result.stdout
    assert "search.py query needs --threshold" in result.stdout
    assert keras.saving.load_model(tmp_path / "run" / "last.keras").output_shape == (None, 512)
