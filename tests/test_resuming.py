"""Resuming a run, as train.py --resume and experiment.resume do it (siamese_reid.resuming):
where it continues from, what it may change, and a run stopped before its report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from siamese_reid import experiment
from siamese_reid.runs import load_run_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TINY = ["training.epochs=1", "training.identities_per_batch=4", "training.images_per_identity=2"]


def demo_settings(root):
    return [f"data.root={root}"]


def resume(run_dir):
    """`python train.py --resume RUN_DIR`, as a user types it."""
    command = [sys.executable, "train.py", "--resume", str(run_dir)]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_resume_after_kill_continues_with_the_right_epoch(tmp_path, tiny_demo, fast_settings):
    settings = (
        fast_settings
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
    assert list(history["epoch"].astype(int)) == [1, 2, 3, 4]  # no epoch lost, none repeated
    # the run's cost is both sessions', not only the resumed one's
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training_seconds"] >= 0.95 * history["elapsed_seconds"][-1]
    assert "s in this session), of which periodic evaluation" in result.stdout
    again = resume(run_dir)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_resume_with_a_changed_model_is_refused_and_touches_nothing(
    tmp_path, tiny_demo, run_train, command_line, fast_settings
):
    _, run_dir = run_train(tmp_path, fast_settings + demo_settings(tiny_demo) + TINY + ["training.epochs=2"])
    shutil_backup = run_dir / "backup"
    shutil_backup.mkdir()  # as if interrupted
    (run_dir / "metrics.json").unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    result = command_line(
        "train.py", "--resume", run_dir, "--set", "model.embedding_dim=64", "--set", "data.image_height=64"
    )
    assert result.returncode == 2
    assert "cannot resume" in result.stderr and "changed data.image_height, model.embedding_dim" in result.stderr
    assert "only training.epochs, evaluation.* and output.* may change" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_a_run_killed_before_its_report_is_finished_from_the_saved_model(
    tmp_path, tiny_demo, run_train, command_line, fast_settings
):
    metrics, run_dir = run_train(tmp_path, fast_settings + demo_settings(tiny_demo) + TINY + ["training.epochs=2"])
    history_before = (run_dir / "history.csv").read_text()
    for name in ("metrics.json", "cmc.png", "query_embeddings.npz", "threshold.json"):
        (run_dir / name).unlink()  # killed after the last epoch, before the report
    result = command_line("train.py", "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training had finished; evaluating the saved model" in result.stdout
    assert "Epoch 1/" not in result.stdout  # no training again
    assert (run_dir / "history.csv").read_text() == history_before  # no duplicate rows
    finished = json.loads((run_dir / "metrics.json").read_text())
    assert finished["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)
    # what training cost is the training's, kept in the run folder, not the report's
    for key in ("training_seconds", "periodic_evaluation_seconds", "peak_memory_gib"):
        assert finished[key] == metrics[key]
    assert (run_dir / "cmc.png").is_file() and (run_dir / "threshold.json").is_file()


def test_a_report_stopped_halfway_leaves_no_metrics_json_and_resume_writes_it_whole(
    tiny_demo, run_stopped_in, fast_settings
):
    # metrics.json says a folder's report is whole (keep_record, compare_runs and resume read it
    # so): a Ctrl-C while the per-query APs are written must leave none, and resume redoes it
    from siamese_reid import reporting

    settings = fast_settings + demo_settings(tiny_demo) + TINY
    run_dir = run_stopped_in(reporting, "_save_array", settings)
    assert (run_dir / "query_embeddings.npz").is_file()  # the report was under way
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "query_average_precisions.npy").exists()
    metrics = experiment.resume(run_dir)
    saved = np.load(run_dir / "query_average_precisions.npy")
    assert json.loads((run_dir / "metrics.json").read_text())["mAP"] == pytest.approx(metrics["mAP"])
    assert np.nanmean(saved) == pytest.approx(metrics["mAP"])


def test_a_run_stopped_while_writing_its_report_is_kept_and_resumes_to_the_report(
    tmp_path, tiny_demo, run_stopped_in, fast_settings
):
    # fit removes its backup when it ends: a Ctrl-C while the report is written must still find
    # a saved epoch (last.keras) and keep the trained run
    settings = fast_settings + demo_settings(tiny_demo) + TINY + ["training.epochs=2"]
    run_dir = run_stopped_in(experiment, "final_report", settings)
    assert run_dir == tmp_path / "run" and (run_dir / "last.keras").is_file()
    # trained but unreported: the report, no training, scored as the resume asks, and config.yaml
    # says how (compare_runs trusts a folder's saved scores to be what its config.yaml scores)
    # (fast_settings: false); a smaller training.epochs leads here too, and must not rewrite
    # the 2 epochs that were trained
    metrics = experiment.resume(run_dir, ["evaluation.flip_test=true", "training.epochs=1"])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["mAP"] == pytest.approx(metrics["mAP"]) and saved["protocol"]["flip_test"] is True
    assert load_run_config(run_dir).evaluation.flip_test is True
    assert load_run_config(run_dir).training.epochs == 2
