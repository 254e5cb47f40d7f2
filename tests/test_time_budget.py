"""training.time_budget_hours (siamese_reid.time_budget): a new run times its train step, then
trains the epochs that fit, exactly as a run given that many epochs would."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from siamese_reid import experiment, time_budget
from siamese_reid.config import load_config
from siamese_reid.errors import ReIDError
from siamese_reid.runs import HISTORY, METRICS, TIME_BUDGET, load_run_config, read_history

TINY = [
    "training.steps_per_epoch=3",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
    "evaluation.every_n_epochs=0",
]


def test_the_epochs_that_fit_are_counted_from_what_is_left_after_timing_and_the_reserve():
    # 2 h, 60 s of timing, the 10% reserve: (7200 - 60) x 0.9 = 6426 s; epochs of 585 s (202
    # steps of 2.9 s, the market1501_cpu recipe on a 2-core Zen 4): 10.98 -> 10
    assert time_budget.epochs_within_budget(7200, 60, 585, 32) == 10
    assert time_budget.epochs_within_budget(7200, 60, 585, 8) == 8  # the recipe's own length fits
    assert time_budget.epochs_within_budget(7200, 60, 6426, 32) == 1
    assert time_budget.epochs_within_budget(7200, 60, 6427, 32) == 0
    assert time_budget.epochs_within_budget(60, 90, 1, 32) == 0  # timing alone took the budget


def decide(monkeypatch, settings, step_seconds, steps=100):
    """fit_to_budget's (config, decision) for a config file's settings, on a machine whose train
    step takes `step_seconds` (the timing itself is replaced)."""
    config = load_config(None, settings)
    step_time = time_budget.StepTime(step_seconds, (step_seconds, step_seconds))
    monkeypatch.setattr(time_budget, "time_a_copy", lambda *_: (step_time, steps))
    return time_budget.fit_to_budget(config, [], tf.distribute.get_strategy())


def test_a_budget_too_short_for_the_warm_up_says_the_smallest_that_fits(monkeypatch):
    # epochs of 100 x 15 s = 1,500 s: 1 h holds 2 of them, the 2 warm-up epochs and no more
    settings = ["training.epochs=32", "training.warmup_epochs=2", "training.time_budget_hours=1"]
    with pytest.raises(ReIDError) as refused:
        decide(monkeypatch, settings, 15.0)
    message = str(refused.value)
    assert "fits 2 epoch(s)" in message and "needs 3 (2 warm-up and 1 more)" in message, message
    # 3 x 1,500 s / 0.9 = 5,000 s (plus the instant timing): 1.39 h, which then fits 3
    assert "give at least 1.39," in message
    config, decision = decide(monkeypatch, [*settings[:2], "training.time_budget_hours=1.39"], 15.0)
    assert config.training.epochs == decision["epochs"] == 3


def test_a_multistep_schedule_is_not_cut_short(monkeypatch):
    settings = ["training.schedule=multistep", "training.epochs=120", "training.lr_milestones=[40,70]"]
    with pytest.raises(ReIDError, match=r"lr_milestones \[40, 70\] are epochs of the 120"):
        decide(monkeypatch, [*settings, "training.time_budget_hours=1"], 1.0)  # 100-s epochs: 32 of them
    config, decision = decide(monkeypatch, [*settings, "training.time_budget_hours=4"], 1.0)  # all 120 fit
    assert config.training.epochs == 120 and decision["configured_epochs"] == 120


def test_without_a_budget_nothing_is_timed(monkeypatch):
    config = load_config(None, ["training.epochs=7"])
    monkeypatch.setattr(time_budget, "time_a_copy", lambda *_: pytest.fail("timed without a budget"))
    assert time_budget.fit_to_budget(config, [], tf.distribute.get_strategy()) == (config, None)


@pytest.mark.slow
def test_a_budgeted_run_trains_the_epochs_that_fit_exactly_as_a_run_given_them_and_resumes_so(
    tmp_path, tiny_demo, run_train, run_stopped_in, fast_settings, monkeypatch
):
    settings = fast_settings + [f"data.root={tiny_demo}", *TINY]
    run_train(tmp_path, [*settings, "training.epochs=2"], name="given")

    timed, really_time = [], time_budget.time_train_steps

    def slow_machine(model, dataset, steps=time_budget.MEASURED_STEPS):
        timed.append(really_time(model, dataset, steps))
        # 500 s a step: epochs of 1,500 s, of which (3,600 s - timing) x 0.9 holds 2
        return time_budget.StepTime(500.0, (480.0, 520.0))

    monkeypatch.setattr(time_budget, "time_train_steps", slow_machine)
    # stopped after its first epoch (TensorBoard's is the last callback: the backup is written)
    budgeted = [*settings, "training.epochs=5", "training.time_budget_hours=1"]
    run_dir = run_stopped_in(keras.callbacks.TensorBoard, "on_epoch_end", budgeted)

    assert len(timed) == 1 and timed[0].median > 0  # the step really was timed, once
    assert load_run_config(run_dir).training.epochs == 2  # what the resume continues
    decision = json.loads((run_dir / TIME_BUDGET).read_text())
    assert (decision["configured_epochs"], decision["epochs"], decision["steps_per_epoch"]) == (5, 2, 3)
    assert decision["predicted_training_seconds"] == 2 * 3 * 500.0
    monkeypatch.setattr(time_budget, "time_train_steps", lambda *_: pytest.fail("a resumed run timed again"))
    with pytest.raises(ReIDError, match="changed training.time_budget_hours"):
        experiment.resume(run_dir, ["training.time_budget_hours=3"])  # the run's length is decided
    experiment.resume(run_dir)
    assert (run_dir / METRICS).is_file()
    given, trained = read_history(tmp_path / "given" / HISTORY), read_history(run_dir / HISTORY)
    assert len(trained["loss"]) == 2
    # the copy that was timed left nothing the run draws: same initial weights, batches, losses
    np.testing.assert_allclose(trained["loss"], given["loss"], rtol=1e-5)


def test_a_budget_that_fits_no_epoch_is_one_line_and_leaves_no_run_folder(tmp_path, tiny_demo, command_line):
    arguments = ["--output_dir", tmp_path, "--set", f"data.root={tiny_demo}", "--set", "output.run_name=short"]
    for setting in ["data.image_height=32", "data.image_width=32", "model.vgg_blocks=3", *TINY]:
        arguments += ["--set", setting]
    finished = command_line("train.py", *arguments, "--set", "training.time_budget_hours=0.00001")
    assert finished.returncode != 0
    error = finished.stderr.strip().splitlines()
    assert len(error) == 1 and "training.time_budget_hours" in error[0] and "fits 0 epoch" in error[0], error
    assert not (tmp_path / "short").exists()


def test_several_workers_are_refused(monkeypatch):
    # each worker would time its own step and could decide another number of epochs
    from siamese_reid import distribution

    monkeypatch.setattr(distribution, "is_multi_worker", lambda strategy: True)
    training = load_config(None, ["training.time_budget_hours=2"]).training
    with pytest.raises(ReIDError, match="needs a single machine"):
        time_budget.check_budget_applies(training, tf.distribute.get_strategy())
    time_budget.check_budget_applies(dataclasses.replace(training, time_budget_hours=0), tf.distribute.get_strategy())
