"""End-to-end training through train.py's code path, on a tiny generated demo dataset."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from siamese_reid.cli.train import main as train_main
from siamese_reid.config import load_config
from siamese_reid.data.records import read_market_folder
from tests.conftest import PROJECT_ROOT

# Small, fast settings: 3 VGG blocks on 32x32 inputs.
FAST = [
    "data.image_height=32",
    "data.image_width=32",
    "model.vgg_blocks=3",
    "model.embedding_dim=32",
    "evaluation.num_examples=2",
    "evaluation.flip_test=false",
    "training.warmup_epochs=1",
]


def demo_settings(root):
    return [f"data.root={root}"]


def run_train(tmp_path, settings, name="run", extra=()):
    args = ["--output_dir", str(tmp_path), "--set", f"output.run_name={name}"]
    for item in settings:
        args += ["--set", item]
    return train_main(args + list(extra)), tmp_path / name


@pytest.mark.slow
def test_training_improves_retrieval_on_held_out_identities(tmp_path):
    # A demo big enough to learn from, with test identities never seen in training.
    settings = FAST + [
        "demo.dir=" + str(tmp_path / "demo"),
        "demo.num_train_identities=24",
        "demo.num_test_identities=16",
        "demo.num_distractors=8",
        "demo.image_height=64",
        "demo.image_width=32",
        "training.epochs=8",
        "training.learning_rate=0.001",
        "evaluation.every_n_epochs=4",
    ]
    status, run_dir = run_train(tmp_path, settings)
    assert status == 0
    history = np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)
    assert history["loss"][-1] < history["loss"][0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    import keras

    from siamese_reid.cli.common import tower_spec
    from siamese_reid.config import replace
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.model.embedding import build_embedding_model

    config = load_config(run_dir / "config.yaml")
    keras.utils.set_random_seed(config.training.seed)  # the same initial weights as the run
    untrained = build_embedding_model(tower_spec(config))
    query = read_market_folder(tmp_path / "demo" / "query")
    gallery = read_market_folder(tmp_path / "demo" / "bounding_box_test")
    baseline = evaluate_model(untrained, query, gallery, (32, 32), replace(config.evaluation)).ranking
    assert metrics["mAP"] > baseline.mean_ap + 0.05, (metrics["mAP"], baseline.mean_ap)
    assert metrics["rank1"] > baseline.cmc[0]
    # what a user looks at after training
    for name in (
        "loss.png",
        "retrieval_per_epoch.png",
        "cmc.png",
        "retrieval_examples.png",
        "best.keras",
        "last.keras",
        "metrics.json",
        "history.csv",
        "config.yaml",
        "dataset_summary.json",
    ):
        assert (run_dir / name).is_file(), name
    assert set(metrics) >= {"rank1", "rank5", "rank10", "mAP", "mINP", "num_queries", "num_gallery", "protocol"}
    assert "val_mAP" in history.dtype.names


def test_evaluate_cli_on_a_run_and_on_bad_models(tmp_path, tiny_demo, capsys):
    from siamese_reid.cli.evaluate import main as evaluate_main

    status, run_dir = run_train(
        tmp_path,
        FAST
        + demo_settings(tiny_demo)
        + ["training.epochs=1", "training.identities_per_batch=4", "training.images_per_identity=2"],
    )
    assert status == 0
    assert evaluate_main(["--run", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)  # same model, same data, same numbers
    assert (run_dir / "evaluation" / "cmc.png").stat().st_size > 1000
    capsys.readouterr()
    assert evaluate_main(["--weights", str(tmp_path / "nope.keras"), "--set", f"data.root={tiny_demo}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.keras").write_text("garbage")
    assert evaluate_main(["--weights", str(tmp_path / "bad.keras"), "--set", f"data.root={tiny_demo}"]) == 2
    assert "not a loadable Keras model" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_model(tmp_path, tiny_demo, capsys):
    settings = (
        FAST
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
    status, run_dir = run_train(tmp_path, settings)
    err = capsys.readouterr().err
    assert status == 2
    assert "the loss became nan" in err.lower() and "last good model" in err
    assert "Traceback" not in err


def resume(run_dir):
    """`python train.py --resume RUN_DIR`, as a user types it."""
    command = [sys.executable, "train.py", "--resume", str(run_dir)]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_resume_after_kill_continues_with_the_right_epoch(tmp_path, tiny_demo):
    settings = (
        FAST
        + demo_settings(tiny_demo)
        + [
            "training.epochs=4",
            "training.steps_per_epoch=3",
            "training.identities_per_batch=4",
            "training.images_per_identity=2",
            "evaluation.every_n_epochs=0",
            "output.run_name=resumable",
        ]
    )
    command = [sys.executable, "train.py", "--output_dir", str(tmp_path)]
    for item in settings:
        command += ["--set", item]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run_dir = tmp_path / "resumable"
    metadata = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (metadata.exists() and json.loads(metadata.read_text())["epoch"] >= 2):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)  # as hard as a power cut
    process.wait()
    killed_at = json.loads(metadata.read_text())["epoch"]
    assert 2 <= killed_at < 4
    import h5py

    with h5py.File(run_dir / "backup" / "latest.weights.h5") as backup:
        # the optimizer's step counter drives the learning-rate schedule: it must be saved too
        assert int(backup["optimizer/vars/0"][()]) == killed_at * 3
    result = resume(run_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from the end of epoch {killed_at}" in result.stdout
    history = np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)
    assert list(history["epoch"].astype(int)) == list(range(4))  # no epoch lost, none repeated
    assert (run_dir / "metrics.json").is_file()
    again = resume(run_dir)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_bad_dataset_is_one_line_error(tmp_path, capsys):
    (tmp_path / "data" / "bounding_box_train").mkdir(parents=True)
    status, _ = run_train(tmp_path, [f"data.root={tmp_path / 'data'}"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().count("\n") == 0 and "train folder" in err and "is empty" in err


def _train_in_subprocess(tmp_path, run_name, settings, preamble=""):
    """Runs train.py's main in a fresh process (device setup and the mixed-precision policy
    are global to a TensorFlow process)."""
    args = ["--output_dir", str(tmp_path), "--set", f"output.run_name={run_name}"]
    for item in settings:
        args += ["--set", item]
    script = f"{preamble}\nfrom siamese_reid.cli.train import main\nraise SystemExit(main({args!r}))\n"
    return subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


SMALL_RUN = [
    "training.epochs=1",
    "training.steps_per_epoch=2",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
]


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, tiny_demo):
    preamble = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"
    )
    settings = FAST + demo_settings(tiny_demo) + SMALL_RUN + ["training.strategy=mirrored"]
    result = _train_in_subprocess(tmp_path, "mirrored", settings, preamble)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 replica(s)" in result.stdout
    assert (tmp_path / "mirrored" / "metrics.json").is_file()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_and_xla_switches_train_on_cpu(tmp_path, tiny_demo, precision):
    settings = (
        FAST
        + demo_settings(tiny_demo)
        + SMALL_RUN
        + [
            f"training.precision={precision}",
            "training.xla=true",
            "training.sampler=triplet",
            "training.triplet_batch_size=4",
        ]
    )
    result = _train_in_subprocess(tmp_path, "mp", settings)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = np.genfromtxt(tmp_path / "mp" / "history.csv", delimiter=",", names=True)
    assert np.isfinite(history["loss"]).all()
    embeddings = np.load(tmp_path / "mp" / "query_embeddings.npz")["features"]
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-3)


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint_and_backup(tmp_path):
    import keras
    import tensorflow as tf

    from siamese_reid.training import EmbeddingCheckpoint, NonFiniteLossError, StopOnNonFiniteLoss

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


def test_training_split_with_one_identity_is_a_clear_error(tmp_path, capsys):
    from tests.conftest import write_image

    root = tmp_path / "data"
    for split, names in (
        ("bounding_box_train", ["0001_c1s1_000001_01.jpg", "0001_c2s1_000002_01.jpg"]),
        ("query", ["0002_c1s1_000003_01.jpg", "0003_c1s1_000004_01.jpg"]),
        ("bounding_box_test", ["0002_c2s1_000005_01.jpg", "0003_c2s1_000006_01.jpg"]),
    ):
        for index, name in enumerate(names):
            write_image(root / split / name, seed=index)
    status, _ = run_train(tmp_path, [f"data.root={root}"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip() == "error: the training split has fewer than 2 usable identities: triplets need negatives"
