"""The run folder: created in one atomic step, never reused."""

import threading
from pathlib import Path

import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.runs import create_run_dir


def test_a_folder_created_between_check_and_creation_is_refused_in_one_line(tmp_path, monkeypatch):
    # another run creates the folder right after this one looked: the answer is the usual refusal
    (tmp_path / "same").mkdir()
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda path: False if path.name == "same" else real_exists(path))
    with pytest.raises(ReIDError, match="already exists: use --resume"):
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
