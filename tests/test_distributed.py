"""Training on several replicas (tf.distribute) takes the steps one device takes.

A TensorFlow process fixes its devices when it starts, so every multi-replica run happens in a
fresh process: two logical CPU devices stand in for two GPUs, and two processes on 127.0.0.1
(TF_CONFIG) for two machines.
"""

import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from siamese_reid.config import load_config
from siamese_reid.distribution import check_batch_split
from siamese_reid.errors import ReIDError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# A tiny tower (one VGG block, BatchNorm "bnneck" before the L2 normalisation), batch-hard
# mining, plain SGD with momentum at a constant rate: two steps of one batch each.
TWO_STEPS = [
    "data.image_height=32",
    "data.image_width=32",
    "model.vgg_blocks=1",
    "model.embedding_dim=16",
    "model.bnneck=true",
    "loss.name=batch_hard",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
    "training.epochs=2",
    "training.steps_per_epoch=1",
    "training.optimizer=sgd",
    "training.learning_rate=0.01",
    "training.warmup_epochs=0",
    "training.schedule=constant",
    "evaluation.every_n_epochs=0",
    "evaluation.flip_test=false",
    "evaluation.num_examples=0",
    # equivalence to 1e-5 is a float32 claim: bfloat16 rounds differently with the batch split
    "training.precision=float32",
]

# Splits the CPU in two with TensorFlow's own call, not the project's, before anything else
# runs, then trains the same run on both devices ("mirrored") and on one ("default").
TRAIN_BOTH_WAYS = """
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from siamese_reid import experiment
from siamese_reid.config import load_config
from siamese_reid.console import show_messages

show_messages()  # "N replica(s)" is read from the library's lines
settings, output_dir = json.loads(sys.argv[1]), sys.argv[2]
for strategy in ("mirrored", "default"):
    config = load_config("config.yaml", settings + [f"training.strategy={strategy}", f"output.run_name={strategy}"])
    experiment.train(config, output_dir)
"""


def run_python(arguments, timeout=300, **options):
    return subprocess.run(
        [sys.executable, *map(str, arguments)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )


def with_settings(settings):
    return [item for setting in settings for item in ("--set", setting)]


@pytest.fixture(scope="module")
def runs_both_ways(tmp_path_factory, tiny_demo):
    """The run folders of the same two SGD steps on two replicas and on one device."""
    output_dir = tmp_path_factory.mktemp("both_ways")
    settings = TWO_STEPS + [f"data.root={tiny_demo}"]
    result = run_python(["-c", TRAIN_BOTH_WAYS, json.dumps(settings), output_dir])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("2 replica(s)") == 1 and result.stdout.count("1 replica(s)") == 1
    return output_dir / "mirrored", output_dir / "default"


def history(run_dir):
    return np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)


def saved_weights(run_dir):
    import keras

    model = keras.saving.load_model(run_dir / "last.keras", compile=False)
    return {variable.path: np.asarray(variable) for variable in model.weights}


def test_two_replicas_log_the_loss_of_one_device(runs_both_ways):
    two_replicas, one_device = map(history, runs_both_ways)
    # The first step starts from the same weights: the same loss, not N times it, and the same
    # batch statistics (mined over the whole batch, not within each replica's half).
    for name in ("loss", "mean_positive_distance", "mean_negative_distance", "active_triplet_fraction"):
        assert two_replicas[name][0] == pytest.approx(one_device[name][0], rel=1e-5, abs=1e-6), name


def test_two_sgd_steps_on_two_replicas_equal_the_steps_on_one_device(runs_both_ways):
    two_replicas, one_device = map(history, runs_both_ways)
    np.testing.assert_allclose(two_replicas["loss"], one_device["loss"], rtol=1e-5, atol=1e-6)
    assert abs(one_device["loss"][1] - one_device["loss"][0]) > 1e-3  # the first step changed the model
    replicated, single = map(saved_weights, runs_both_ways)
    assert replicated.keys() == single.keys() and any("moving_mean" in path for path in single)
    for path in single:
        # BatchNorm's moving statistics included: they come from the global batch too.
        np.testing.assert_allclose(replicated[path], single[path], rtol=1e-5, atol=1e-5, err_msg=path)


def test_batches_that_replicas_cannot_share_equally_are_refused():
    pk = load_config(None, ["training.identities_per_batch=6"]).training
    check_batch_split(pk, 3)
    with pytest.raises(ReIDError, match=r"identities_per_batch \(6\) must be divisible by the 4 replicas"):
        check_batch_split(pk, 4)
    triplets = load_config(None, ["training.sampler=triplet", "training.triplet_batch_size=5"]).training
    with pytest.raises(ReIDError, match=r"triplet_batch_size \(5\) must be divisible by the 2 replicas"):
        check_batch_split(triplets, 2)


def test_cpu_replicas_after_tensorflow_started_is_a_clear_error():
    script = (
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0  # TensorFlow has started: its devices are fixed\n"
        "from siamese_reid.distribution import configure_cpu_replicas\n"
        "configure_cpu_replicas(1)  # what the process already has: accepted\n"
        "configure_cpu_replicas(2)\n"
    )
    result = run_python(["-c", script])
    assert result.returncode == 1 and "ReIDError: training.cpu_replicas=2 could not be applied" in result.stderr
    assert "restart the kernel" in result.stderr


def test_every_batch_norm_layer_is_synchronised_while_training_and_saved_plain():
    from siamese_reid.distribution import batch_norm_unsynchronized, synchronize_batch_norm
    from siamese_reid.model.embedding import build_embedding_model

    model = load_config(None, ["model.backbone=mobilenetv2", "model.bnneck=true"]).model
    tower = build_embedding_model(model, (32, 32))
    synchronize_batch_norm(tower)
    synchronized = json.dumps(tower.get_config())  # nested: the backbone's layers are in it
    num_layers = synchronized.count('"class_name": "BatchNormalization"')
    assert num_layers > 40 and synchronized.count('"synchronized": true') == num_layers
    assert '"name": "bnneck"' in synchronized
    with batch_norm_unsynchronized(tower):
        assert '"synchronized": true' not in json.dumps(tower.get_config())
    assert json.dumps(tower.get_config()) == synchronized  # restored for training


def test_cpu_replicas_from_the_command_line(tmp_path, tiny_demo):
    mirrored = ["training.strategy=mirrored", "training.cpu_replicas=2", f"data.root={tiny_demo}"]
    train = ["train.py", "--output_dir", tmp_path, *with_settings(TWO_STEPS + mirrored)]
    refused = run_python([*train, "--set", "training.identities_per_batch=3", "--set", "output.run_name=odd"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "training.identities_per_batch (3) must be divisible by the 2 replicas" in refused.stderr
    assert not (tmp_path / "odd").exists()  # refused before a run folder or any training
    result = run_python([*train, "--set", "output.run_name=two"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 replica(s)" in result.stdout
    run_dir = tmp_path / "two"
    assert (run_dir / "metrics.json").is_file() and len(history(run_dir)["loss"]) == 2
    # The saved tower has plain BatchNorm layers: synchronisation is a setting of training.
    with zipfile.ZipFile(run_dir / "last.keras") as archive:
        config = archive.read("config.json").decode()
    assert '"synchronized": false' in config and '"synchronized": true' not in config


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def run_two_workers(tmp_path, arguments, timeout=300):
    """Runs `python ARGUMENTS` as worker 0 (the chief) and worker 1 of a cluster on
    127.0.0.1, each with its own TMPDIR; returns [(returncode, stdout, stderr)] and the TMPDIRs."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes, scratch = [], []
    for index in range(2):
        scratch.append(tmp_path / f"tmp{index}")
        scratch[-1].mkdir()
        cluster = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        environment = dict(os.environ, TF_CONFIG=json.dumps(cluster), TMPDIR=str(scratch[-1]))
        processes.append(
            subprocess.Popen(
                [sys.executable, *map(str, arguments)],
                cwd=PROJECT_ROOT,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [(process.returncode, *output) for process, output in zip(processes, outputs, strict=True)], scratch


def test_two_workers_train_one_run_that_only_the_chief_writes(tmp_path, tiny_demo):
    runs = tmp_path / "runs"
    # No output.run_name: the folder is named by the chief's clock, and the other worker must
    # learn that name from the chief.
    settings = TWO_STEPS + ["training.strategy=multi_worker", f"data.root={tiny_demo}"]
    results, scratch = run_two_workers(tmp_path, ["train.py", "--output_dir", runs, *with_settings(settings)])
    for returncode, stdout, stderr in results:
        assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    (run_dir,) = runs.iterdir()  # one run folder, the chief's
    chief, other = (stdout for _, stdout, _ in results)
    assert f"run folder: {run_dir}" in chief and f"run folder: {run_dir}" in other
    assert f"results written to {run_dir}" in chief
    assert f"done; the chief writes the results to {run_dir}" in other
    assert (run_dir / "metrics.json").is_file() and (run_dir / "last.keras").is_file()
    assert len(history(run_dir)["loss"]) == 2
    assert not any(scratch[1].iterdir())  # the other worker's scratch folder is gone


def test_a_run_folder_the_chief_cannot_create_stops_every_worker(tmp_path, tiny_demo):
    (tmp_path / "taken").mkdir()
    settings = TWO_STEPS + ["training.strategy=multi_worker", f"data.root={tiny_demo}", "output.run_name=taken"]
    results, _ = run_two_workers(tmp_path, ["train.py", "--output_dir", tmp_path, *with_settings(settings)])
    (chief_code, _, chief_error), (other_code, _, other_error) = results
    assert chief_code == 2 and "'" + str(tmp_path / "taken") + "' already exists" in chief_error
    assert other_code == 2 and "the chief could not create the run folder" in other_error
    assert not any((tmp_path / "taken").iterdir())


@pytest.fixture(scope="module")
def strong_baseline_both_ways(tmp_path_factory, tiny_demo):
    """The same two SGD steps with the ID loss, BNNeck and center loss on two replicas and on one."""
    output_dir = tmp_path_factory.mktemp("strong_baseline_both_ways")
    settings = TWO_STEPS + [
        f"data.root={tiny_demo}",
        "loss.triplet_feature=pre_bnneck",
        "loss.id_weight=1.0",
        "loss.center_weight=0.0005",
    ]
    result = run_python(["-c", TRAIN_BOTH_WAYS, json.dumps(settings), output_dir])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir / "mirrored", output_dir / "default"


def test_identity_losses_and_centres_on_two_replicas_take_the_steps_of_one_device(strong_baseline_both_ways):
    # The ID and center losses return per-sample values, which Keras divides between replicas;
    # the centres average the replicas' steps. A loss returned as a batch mean would be counted
    # twice here.
    two_replicas, one_device = map(history, strong_baseline_both_ways)
    for name in ("loss", "triplet_loss", "id_loss", "center_loss", "id_accuracy"):
        np.testing.assert_allclose(two_replicas[name], one_device[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert abs(one_device["center_loss"][1] - one_device["center_loss"][0]) > 1e-3  # the centres moved
    replicated, single = map(saved_weights, strong_baseline_both_ways)
    assert not [path for path in single if "classifier" in path or "centers" in path]
    for path in single:
        np.testing.assert_allclose(replicated[path], single[path], rtol=1e-5, atol=1e-5, err_msg=path)


@pytest.fixture(scope="module")
def stripe_heads_both_ways(tmp_path_factory, tiny_demo):
    """The same two SGD steps with per-stripe ID losses (4 stripes) on two replicas and on one."""
    output_dir = tmp_path_factory.mktemp("stripe_heads_both_ways")
    settings = TWO_STEPS + [f"data.root={tiny_demo}", "model.stripes=4", "loss.stripe_id_weight=1.0"]
    result = run_python(["-c", TRAIN_BOTH_WAYS, json.dumps(settings), output_dir])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir / "mirrored", output_dir / "default"


def test_per_stripe_heads_normalise_with_the_global_batch_on_two_replicas(stripe_heads_both_ways):
    # The heads' BatchNorms are outside the tower. Synchronised, both ways give the same losses;
    # left per replica (measured), the second step's total loss differs by 2e-3.
    two_replicas, one_device = map(history, stripe_heads_both_ways)
    for name in ("loss", "triplet_loss", *(f"stripe_id_{index}_loss" for index in range(1, 5))):
        np.testing.assert_allclose(two_replicas[name], one_device[name], rtol=1e-5, atol=1e-6, err_msg=name)
    replicated, single = map(saved_weights, stripe_heads_both_ways)
    assert not [path for path in single if "stripe" in path or "classifier" in path]
    for path in single:
        # atol 1e-3: the first convolution's kernel, fed pixels up to 150, ends up to 1.2e-4 apart
        # through the heads' BatchNorms from summation order alone (measured)
        np.testing.assert_allclose(replicated[path], single[path], rtol=1e-5, atol=1e-3, err_msg=path)
