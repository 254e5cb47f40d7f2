"""The run folder: created in one atomic step, never reused."""

import threading
from pathlib import Path

import pytest

from siamese_reid import runs
from siamese_reid.errors import ReIDError
from siamese_reid.runs import create_run_dir


def test_a_folder_created_between_check_and_creation_is_refused_in_one_line(tmp_path, monkeypatch):
    # another run creates the folder right after this one looked: the answer is the usual refusal
    (tmp_path / "same").mkdir()
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda path: False if path.name == "same" else real_exists(path))
    with pytest.raises(ReIDError, match="already exists: resume it"):
        create_run_dir(tmp_path, "same")


@pytest.mark.parametrize("attempt", range(3))
def test_runs_started_at_the_same_moment_get_one_folder_and_one_answer(tmp_path, attempt):
    outcomes, barrier = [], threading.Barrier(8)

    def start_run():
        barrier.wait()
        try:
            outcomes.append(create_run_dir(tmp_path, "race"))
        except ReIDError as error:
            outcomes.append(error)
        except Exception as error:  # anything else is the defect this test guards against
            outcomes.append(("unexpected", error))

    threads = [threading.Thread(target=start_run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(outcome, Path) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, ReIDError) for outcome in outcomes) == 7


def test_a_finished_run_is_refused_with_its_own_message(tmp_path):
    finished = create_run_dir(tmp_path, "done")
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(ReIDError, match="already holds a finished run"):
        create_run_dir(tmp_path, "done")


def test_a_folder_without_config_yaml_is_refused_in_the_callers_words(tmp_path):
    from siamese_reid.runs import load_run_config, require_run_dir, run_model_path

    message = f"'{tmp_path}' is not a training run folder (no config.yaml in it)"
    for read in (require_run_dir, load_run_config, run_model_path):
        with pytest.raises(ReIDError) as caught:
            read(tmp_path)
        assert str(caught.value) == message
    with pytest.raises(ReIDError) as caught:
        require_run_dir(tmp_path, refusal="cannot resume: ")
    assert str(caught.value) == f"cannot resume: {message}"


def test_a_run_config_is_read_with_overrides(tmp_path):
    from siamese_reid.config import load_config, save_config
    from siamese_reid.runs import load_run_config

    save_config(load_config(None, ["training.epochs=7"]), tmp_path / "config.yaml")
    assert load_run_config(tmp_path).training.epochs == 7
    assert load_run_config(tmp_path, ["training.epochs=9"]).training.epochs == 9


def test_the_threshold_is_read_from_threshold_json_or_is_none(tmp_path):
    import json

    from siamese_reid.runs import read_threshold

    assert read_threshold(tmp_path) is None
    record = {"value": 0.75, "split": "validation", "metric": "euclidean"}
    (tmp_path / "threshold.json").write_text(json.dumps(record))
    assert read_threshold(tmp_path) == record


def test_a_run_is_finished_once_reported_and_no_longer_training(tmp_path):
    from siamese_reid.runs import has_saved_epoch, is_finished

    assert not is_finished(tmp_path) and not has_saved_epoch(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert is_finished(tmp_path)
    (tmp_path / "backup").mkdir()  # resumed with more epochs: the old report stays until the new one
    assert not is_finished(tmp_path) and not has_saved_epoch(tmp_path)
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 2}')
    assert has_saved_epoch(tmp_path)
    (tmp_path / "backup" / "training_metadata.json").unlink()  # fit ended: its backup is removed
    (tmp_path / "last.keras").write_bytes(b"model")
    assert has_saved_epoch(tmp_path)


def test_a_run_stopped_after_its_last_epoch_is_trained_but_unreported(tmp_path):
    import json

    from siamese_reid.runs import trained_but_unreported

    (tmp_path / "last.keras").write_bytes(b"model")
    (tmp_path / "history.csv").write_text("epoch,loss\n1,0.5\n2,0.4\n")
    assert trained_but_unreported(tmp_path, epochs=2)  # the backup is deleted when fit ends
    with pytest.raises(ReIDError, match="finished training after 2 epochs and its training state is gone"):
        trained_but_unreported(tmp_path, epochs=3)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 2}))
    assert trained_but_unreported(tmp_path, epochs=2) and not trained_but_unreported(tmp_path, epochs=3)
    (tmp_path / "metrics.json").write_text("{}")
    assert not trained_but_unreported(tmp_path, epochs=2)


def test_evaluation_folders_are_fresh_even_within_one_second(tmp_path):
    first = runs.create_evaluation_dir(tmp_path)
    (first / "metrics.json").write_text("{}")
    second = runs.create_evaluation_dir(tmp_path)
    assert first != second and (first / "metrics.json").read_text() == "{}"
    with pytest.raises(ReIDError, match="already (exists|holds a finished run)"):
        runs.create_run_dir(tmp_path / "evaluations", first.name)


def test_reusing_the_name_of_a_finished_run_does_not_suggest_resuming_it(tmp_path):
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(ReIDError, match="already holds a finished run: choose another output.run_name"):
        runs.create_run_dir(tmp_path, "done")
    (tmp_path / "interrupted" / "backup").mkdir(parents=True)
    with pytest.raises(ReIDError, match="resume it"):
        runs.create_run_dir(tmp_path, "interrupted")
