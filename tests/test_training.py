"""End-to-end training through the library workflow (`siamese_reid.experiment`, which train.py
calls), on a tiny generated demo dataset; the command lines themselves in subprocesses."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from siamese_reid import experiment
from siamese_reid.config import load_config
from siamese_reid.data.readers import read_market_folder
from siamese_reid.errors import ReIDError
from siamese_reid.model.building import build_tower

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def demo_settings(root):
    return [f"data.root={root}"]


def with_settings(settings):
    return [item for setting in settings for item in ("--set", setting)]


@pytest.mark.slow
def test_training_improves_retrieval_on_held_out_identities(tmp_path, run_train, fast_settings):
    # A demo big enough to learn from, with test identities never seen in training.
    settings = fast_settings + [
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
    metrics, run_dir = run_train(tmp_path, settings)
    history = np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)
    assert history["loss"][-1] < history["loss"][0]
    assert metrics == json.loads((run_dir / "metrics.json").read_text())
    import keras

    from siamese_reid.config import replace
    from siamese_reid.evaluation import evaluate_model

    config = load_config(run_dir / "config.yaml")
    keras.utils.set_random_seed(config.training.seed)  # the same initial weights as the run
    untrained = build_tower(config)
    query, _ = read_market_folder(tmp_path / "demo" / "query")
    gallery, _ = read_market_folder(tmp_path / "demo" / "bounding_box_test")
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
    assert "test_mAP" in history.dtype.names and "val_mAP" not in history.dtype.names  # scored on query/gallery


TINY = ["training.epochs=1", "training.identities_per_batch=4", "training.images_per_identity=2"]


def test_evaluate_cli_never_overwrites_an_evaluation_and_rejects_bad_models(
    tmp_path, tiny_demo, run_train, command_line, fast_settings
):
    _, run_dir = run_train(tmp_path, fast_settings + demo_settings(tiny_demo) + TINY)
    trained = json.loads((run_dir / "metrics.json").read_text())
    first = command_line("evaluate.py", "--run", run_dir)
    second = command_line("evaluate.py", "--run", run_dir, "--set", "evaluation.ap_definition=market_official")
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    folders = sorted((run_dir / "evaluations").iterdir())
    assert len(folders) == 2  # each evaluation in its own folder, the first one kept
    first_metrics, second_metrics = (json.loads((f / "metrics.json").read_text()) for f in folders)
    assert first_metrics["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)  # same model, data, numbers
    assert second_metrics["protocol"]["ap_definition"] == "market_official"
    assert (folders[0] / "cmc.png").stat().st_size > 1000
    missing = command_line("evaluate.py", "--weights", tmp_path / "nope.keras", "--set", f"data.root={tiny_demo}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "bad.keras").write_text("garbage")
    bad = command_line("evaluate.py", "--weights", tmp_path / "bad.keras", "--set", f"data.root={tiny_demo}")
    assert bad.returncode == 2 and "not a loadable Keras model" in bad.stderr


def test_validation_split_monitors_training_and_the_test_split_is_scored_once(
    tmp_path, tiny_demo, run_train, fast_settings
):
    metrics, run_dir = run_train(
        tmp_path,
        fast_settings
        + demo_settings(tiny_demo)
        + TINY
        + ["data.validation_fraction=0.3", "evaluation.every_n_epochs=1"],
    )
    summary = json.loads((run_dir / "dataset_summary.json").read_text())
    test_pids = {int(p) for p in np.load(run_dir / "query_embeddings.npz")["pids"]}
    assert summary["validation_query"]["identities"] >= 2
    assert summary["train"]["identities"] + summary["validation_gallery"]["identities"] == 8  # tiny demo: 8
    assert set(metrics["validation"]) >= {"rank1", "mAP", "standard_errors"}
    assert json.loads((run_dir / "run_info.json").read_text())["monitored_split"] == "validation"
    history = np.genfromtxt(run_dir / "history.csv", delimiter=",", names=True)
    assert float(history["val_mAP"]) == pytest.approx(metrics["validation"]["mAP"])
    # the test split is the real query folder, untouched by the validation split
    assert test_pids == {s.pid for s in read_market_folder(tiny_demo / "query")[0]}
    aps = np.load(run_dir / "query_average_precisions.npy")
    aps = aps[np.isfinite(aps)]
    expected_error = np.sqrt(np.sum((aps - aps.mean()) ** 2) / (len(aps) - 1) / len(aps))
    assert metrics["standard_errors"]["mAP"] == pytest.approx(expected_error)


def test_bad_dataset_is_one_line_error(tmp_path, command_line):
    (tmp_path / "data" / "bounding_box_train").mkdir(parents=True)
    result = command_line("train.py", "--output_dir", tmp_path, "--set", f"data.root={tmp_path / 'data'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "train folder" in result.stderr and "is empty" in result.stderr


def _train_in_subprocess(tmp_path, run_name, settings, preamble=""):
    """Runs train.py's main in a fresh process (device setup and the mixed-precision policy
    are global to a TensorFlow process)."""
    args = ["--output_dir", str(tmp_path), "--set", f"output.run_name={run_name}"]
    for item in settings:
        args += ["--set", item]
    script = (
        f"{preamble}\nimport runpy, sys\nsys.argv = ['train.py', *{args!r}]\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


SMALL_RUN = [
    "training.epochs=1",
    "training.steps_per_epoch=2",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
]


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_and_xla_switches_train_on_cpu(tmp_path, tiny_demo, precision, fast_settings):
    settings = (
        fast_settings
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


def test_training_split_with_one_identity_is_a_clear_error(tmp_path, write_image, command_line):
    root = tmp_path / "data"
    for split, names in (
        ("bounding_box_train", ["0001_c1s1_000001_01.jpg", "0001_c2s1_000002_01.jpg"]),
        ("query", ["0002_c1s1_000003_01.jpg", "0003_c1s1_000004_01.jpg"]),
        ("bounding_box_test", ["0002_c2s1_000005_01.jpg", "0003_c2s1_000006_01.jpg"]),
    ):
        for index, name in enumerate(names):
            write_image(root / split / name, seed=index)
    result = command_line("train.py", "--output_dir", tmp_path, "--set", f"data.root={root}")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "error: the training split has fewer than 2 usable identities: triplets need negatives"
    )


@pytest.mark.slow
def test_ctrl_c_keeps_the_backup_and_prints_the_resume_command(tmp_path, tiny_demo, fast_settings):
    settings = (
        fast_settings
        + demo_settings(tiny_demo)
        + TINY[1:]
        + [
            "training.epochs=50",
            "training.steps_per_epoch=2",
            "evaluation.every_n_epochs=0",
            "output.run_name=interrupted",
        ]
    )
    command = [sys.executable, "train.py", "--output_dir", str(tmp_path), *with_settings(settings)]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metadata = tmp_path / "interrupted" / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and not metadata.exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert f"continue with: python train.py --resume {tmp_path / 'interrupted'}" in stderr
    assert "Traceback" not in stderr
    assert metadata.exists()


def test_a_failed_start_leaves_no_run_folder(tmp_path, tiny_demo, command_line, fast_settings):
    arguments = [
        "--output_dir",
        tmp_path,
        *with_settings(fast_settings + demo_settings(tiny_demo) + ["output.run_name=again"]),
    ]
    bad_weights = ["--set", f"model.weights={tmp_path / 'missing.weights.h5'}"]
    for _ in range(2):  # the same command twice: the same error, not "run exists"
        result = command_line("train.py", *arguments, *bad_weights)
        assert result.returncode == 2 and "neither 'none', 'imagenet' nor an existing weights file" in result.stderr
        assert not (tmp_path / "again").exists()
    # a failure inside the run folder, before the first epoch is saved (P larger than the
    # identities), is cleaned up too
    too_many = ["--set", "training.identities_per_batch=50"]
    for _ in range(2):
        result = command_line("train.py", *arguments, *too_many)
        assert result.returncode == 2 and "exceeds" in result.stderr, result.stderr[-1000:]
        assert not (tmp_path / "again").exists()


def test_train_never_trains_into_a_folder_that_exists(tmp_path, tiny_demo, fast_settings):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    config = load_config(
        PROJECT_ROOT / "config.yaml", fast_settings + demo_settings(tiny_demo) + ["output.run_name=mine"]
    )
    with pytest.raises(ReIDError, match="already exists"):
        experiment.train(config, tmp_path)
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["thesis.tex"]
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "mine"


def test_epochs_without_evaluation_show_no_nan_and_history_keeps_the_columns(
    tmp_path, tiny_demo, shown_messages, capsys, run_train, fast_settings
):
    # `val_rank1: nan` in the progress bar would read like a diverged loss to a newcomer
    metrics, run_dir = run_train(
        tmp_path, fast_settings + demo_settings(tiny_demo) + TINY + ["training.epochs=3", "evaluation.every_n_epochs=2"]
    )
    output = capsys.readouterr().out
    # a long run says how long it has left, what scoring cost and how much memory it took
    assert "epoch 1/3 took" in output and "left (done near" in output and "epoch 3/3 took" in output
    assert 0 < metrics["periodic_evaluation_seconds"] < metrics["training_seconds"]
    assert 0.1 < metrics["peak_memory_gib"] < 24
    assert "nan" not in output.lower()
    history = reporting_history(run_dir)
    # no validation split: the scores are named for the test split they come from
    assert list(np.isfinite(history["test_mAP"])) == [False, True, True]  # epochs 2 and 3 (the last)
    assert list(history["epoch"]) == [1, 2, 3]  # numbered as on the console and in best.json
    best = json.loads((run_dir / "best.json").read_text())
    assert history["test_mAP"][best["epoch"] - 1] == pytest.approx(best["test_mAP"])
    # each epoch's summary line comes before its scoring line
    lines = output.splitlines()
    scoring = next(index for index, line in enumerate(lines) if line.startswith("epoch 2: scoring on"))
    assert "loss" in lines[scoring - 1] or "loss" in lines[scoring - 2], lines[: scoring + 1]
    assert lines.index("Epoch 3/3") > scoring


def reporting_history(run_dir):
    from siamese_reid.runs import read_history

    return read_history(run_dir / "history.csv")


STRONG_BASELINE = [
    "model.backbone=resnet50",
    "model.last_stride=1",
    "loss.triplet_feature=pre_bnneck",
    "loss.id_weight=1.0",
    "loss.label_smoothing=0.1",
    "loss.center_weight=0.0005",
    "augment.random_erasing=true",
    "augment.erasing_fill=mean",
    "training.weight_decay=0.0005",
    "training.schedule=multistep",
    "training.lr_milestones=[3]",
    "training.precision=auto",
]


@pytest.mark.slow
def test_every_strong_baseline_trick_at_once_trains_and_saves_the_tower_alone(tmp_path, tiny_demo, run_train):
    import keras

    from siamese_reid.precision import cpu_model, resolve_precision

    settings = (
        demo_settings(tiny_demo)
        + STRONG_BASELINE
        + [
            "data.image_height=64",
            "data.image_width=32",
            "model.embedding_dim=32",
            "evaluation.num_examples=2",
            "evaluation.flip_test=false",
            "evaluation.every_n_epochs=0",
            "augment.color_jitter=false",  # not part of the strong baseline; slows learning here
            "training.epochs=4",
            "training.steps_per_epoch=25",
            "training.warmup_epochs=1",
            "training.identities_per_batch=8",
            "training.images_per_identity=2",
        ]
    )
    try:
        metrics, run_dir = run_train(tmp_path, settings)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # auto may have chosen bfloat16
    history = reporting_history(run_dir)
    # measured: loss 3.55, 3.42, 3.32, 3.06 and ID accuracy 0.11 -> 0.32 over the 4 epochs
    assert history["loss"][-1] < history["loss"][0] - 0.2, history["loss"]
    assert history["id_accuracy"][-1] > history["id_accuracy"][0]
    assert {"triplet_loss", "id_loss", "center_loss"} <= set(history)
    run_info = json.loads((run_dir / "run_info.json").read_text())
    assert run_info["precision"] == resolve_precision("auto")._asdict()
    assert run_info["cpu"] == cpu_model()
    saved = keras.saving.load_model(run_dir / "last.keras")  # plain Keras: stock layers only
    assert not [w.path for w in saved.weights if "classifier" in w.path or "centers" in w.path]
    backbone = next(layer for layer in saved.layers if isinstance(layer, keras.Model))
    assert backbone.output.shape[1:3] == (4, 2)  # last stride 1 at 64x32 (2x1 with stride 2)
    assert 0.0 <= metrics["mAP"] <= 1.0


def test_a_history_written_by_an_older_version_keeps_its_columns_and_numbering(tmp_path):
    # epochs numbered from 0 and test scores named val_*: a resumed run appends rows like them
    from siamese_reid.run_cost import RunCostMeter
    from siamese_reid.training import HistoryLogger, monitored_history_split

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_mAP,val_mINP,val_rank1\n0,1.0,NA,NA,NA\n1,0.9,0.5,0.1,0.6\n")
    split = monitored_history_split(path, has_validation=False)
    assert split == "val"
    meter = RunCostMeter(tmp_path / "run_cost.json")
    keys = (f"{split}_mAP", f"{split}_mINP", f"{split}_rank1")
    logger = HistoryLogger(str(path), meter, append=True, extra_keys=keys)
    logger.on_train_begin()
    meter.on_epoch_end(2)
    logger.on_epoch_end(2, {"loss": 0.8})
    logger.on_train_end()
    assert path.read_text().splitlines()[-1].split(",")[:3] == ["2", "0.8", "NA"]
    assert list(reporting_history(tmp_path.parent / tmp_path.name)["epoch"]) == [1, 2, 3]
    assert monitored_history_split(tmp_path / "new.csv", has_validation=False) == "test"
    assert monitored_history_split(path, has_validation=True) == "val"


def test_history_and_run_cost_keep_one_clock_and_a_resumed_run_counts_on_from_its_cost(tmp_path, monkeypatch):
    # the time between two sessions is not training: the second session starts at 130 s; at
    # every epoch history.csv's elapsed_seconds is the training time run_cost.json holds
    import json

    from siamese_reid import run_cost, training

    path = tmp_path / "history.csv"
    now = [1000.0]
    monkeypatch.setattr(run_cost.time, "monotonic", lambda: now[0])
    recorded = []

    def session(epochs, append):
        before = run_cost.cost_so_far(tmp_path) if append else {}
        meter = run_cost.RunCostMeter(tmp_path / "run_cost.json", None, before)
        history = training.HistoryLogger(str(path), meter, append=append, extra_keys=("val_mAP",))
        for callback in (meter, history):
            callback.on_train_begin()
        for epoch, seconds, logs in epochs:
            now[0] += seconds
            meter.on_epoch_end(epoch)
            history.on_epoch_end(epoch, logs)
            recorded.append(json.loads((tmp_path / "run_cost.json").read_text())["training_seconds"])
        history.on_train_end()

    session([(0, 60.0, {"loss": 1.0}), (1, 70.0, {"loss": 0.9, "val_mAP": 0.5})], append=False)
    now[0] = 5000.0  # hours later, in a new process
    session([(2, 50.0, {"loss": 0.8})], append=True)
    history = reporting_history(tmp_path)
    assert list(history["epoch"]) == [1, 2, 3]
    assert list(history["elapsed_seconds"]) == [60.0, 130.0, 180.0] == recorded
    assert path.read_text().splitlines()[0] == "epoch,elapsed_seconds,loss,val_mAP"


def test_periodic_evaluation_scores_the_epochs_asked_for_and_keeps_the_last(tiny_demo, caplog, fast_settings):
    # one callback scores, names the scores for their split, logs its line and keeps the
    # evaluation the report reuses
    import logging

    from siamese_reid import reporting
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.formatting import percent
    from siamese_reid.model.building import image_size
    from siamese_reid.training import MonitoredSplit, PeriodicEvaluation

    every_second = ["evaluation.every_n_epochs=2"]
    config = load_config(PROJECT_ROOT / "config.yaml", fast_settings + demo_settings(tiny_demo) + every_second)
    query = read_market_folder(tiny_demo / "query")[0]
    gallery = read_market_folder(tiny_demo / "bounding_box_test")[0]
    tower, size = build_tower(config), image_size(config)
    monitored = MonitoredSplit(query, gallery, "test", "query / gallery (test)")
    periodic = PeriodicEvaluation(tower, monitored, size, config.evaluation, total_epochs=3)
    caplog.set_level(logging.INFO, logger="siamese_reid")
    logs = [{"loss": 1.0} for _ in range(3)]
    for epoch, epoch_logs in enumerate(logs):
        periodic.on_epoch_end(epoch, epoch_logs)
    assert logs[0] == {"loss": 1.0}  # not an evaluation epoch: no NaN entries either
    assert set(logs[1]) == set(logs[2]) == {"loss", "test_rank1", "test_mAP", "test_mINP"}
    reference = evaluate_model(tower, query, gallery, size, config.evaluation)  # a float32 tower: itself
    expected = reporting.ranking_metrics(reference.ranking, len(query), len(gallery), {})
    assert logs[2]["test_mAP"] == pytest.approx(expected["mAP"]) and logs[2]["test_rank1"] == expected["rank1"]
    kept = reporting.ranking_metrics(periodic.latest.ranking, len(query), len(gallery), {})
    assert kept["mAP"] == pytest.approx(expected["mAP"])  # the last epoch's, which the report reuses
    scoring = [message for message in caplog.messages if "scoring on" in message]
    assert scoring == [f"\nepoch {n}: scoring on query / gallery (test)... " for n in (2, 3)]
    assert f"rank-1 {percent(expected['rank1'])}  mAP {percent(expected['mAP'])}" in caplog.messages


def test_history_columns_numbered_by_stripe_come_in_numeric_order(tmp_path):
    # 12 per-stripe losses: plain string order would put stripe_id_10_loss before stripe_id_2_loss
    from siamese_reid.run_cost import RunCostMeter
    from siamese_reid.training import HistoryLogger

    path = tmp_path / "history.csv"
    meter = RunCostMeter(tmp_path / "run_cost.json")
    logger = HistoryLogger(str(path), meter, extra_keys=("val_mAP",))
    logger.on_train_begin()
    meter.on_epoch_end(0)
    logger.on_epoch_end(0, {"loss": 1.0, **{f"stripe_id_{i}_loss": 0.1 * i for i in range(1, 13)}})
    logger.on_train_end()
    header = path.read_text().splitlines()[0].split(",")
    stripes = [column for column in header if column.startswith("stripe_id_")]
    assert stripes == [f"stripe_id_{i}_loss" for i in range(1, 13)]
    assert header[:3] == ["epoch", "elapsed_seconds", "loss"]
