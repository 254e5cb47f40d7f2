"""training.time_budget_hours (siamese_reid.time_budget): a new run times its train step, then
trains the epochs that fit, exactly as a run given that many epochs would."""

import json

import numpy as np
import pytest

from siamese_reid import experiment, time_budget
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
    assert time_budget.RESERVE == 0.10
    assert time_budget.epochs_within_budget(7200, 60, 585, 32) == 10
    assert time_budget.epochs_within_budget(7200, 60, 585, 8) == 8  # the recipe's own length fits
    assert time_budget.epochs_within_budget(7200, 60, 6426, 32) == 1
    assert time_budget.epochs_within_budget(7200, 60, 6427, 32) == 0
    assert time_budget.epochs_within_budget(60, 90, 1, 32) == 0  # timing alone took the budget


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
    # stopped once trained, before its report: the resume must know the run had 2 epochs, not 5
    budgeted = [*settings, "training.epochs=5", "training.time_budget_hours=1"]
    run_dir = run_stopped_in(experiment, "final_report", budgeted)

    assert len(timed) == 1 and timed[0].median > 0  # the step really was timed, once
    assert load_run_config(run_dir).training.epochs == 2
    decision = json.loads((run_dir / TIME_BUDGET).read_text())
    assert (decision["configured_epochs"], decision["epochs"], decision["steps_per_epoch"]) == (5, 2, 3)
    assert decision["predicted_training_seconds"] == 2 * 3 * 500.0
    experiment.resume(run_dir)  # unpatched: timing again would give this machine's real epochs
    assert (run_dir / METRICS).is_file() and len(timed) == 1
    given, trained = read_history(tmp_path / "given" / HISTORY), read_history(run_dir / HISTORY)
    assert len(trained["loss"]) == 2
    # the copy that was timed drew nothing the run draws: same initial weights, batches, losses
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
