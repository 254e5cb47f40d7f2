"""Learning curves read from run folders: scores against training wall time."""

import numpy as np
import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.learning_curves import plot_learning_curves, read_curve

HISTORY = """epoch,elapsed_seconds,loss,test_mAP,test_rank1
1,61.5,2.0,NA,NA
2,120.0,1.5,0.41,0.6
3,181.25,1.2,NA,NA
4,245.0,1.0,0.55,0.7
"""


def test_curve_holds_the_scored_epochs_at_their_wall_time(tmp_path):
    (tmp_path / "history.csv").write_text(HISTORY)
    curve = read_curve(tmp_path, "test_mAP", "batch-hard")
    assert curve.label == "batch-hard"
    np.testing.assert_allclose(curve.seconds, [120.0, 245.0])
    np.testing.assert_allclose(curve.values, [0.41, 0.55])


def test_a_run_that_never_scored_the_metric_says_what_it_scored(tmp_path):
    (tmp_path / "history.csv").write_text(HISTORY)
    with pytest.raises(ReIDError, match=r"never scored 'val_mAP'.*test_mAP"):
        read_curve(tmp_path, "val_mAP", "x")


def test_a_history_without_wall_time_is_refused(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss,test_mAP\n1,2.0,0.3\n")
    with pytest.raises(ReIDError, match="elapsed_seconds"):
        read_curve(tmp_path, "test_mAP", "x")


def test_a_folder_without_history_is_refused(tmp_path):
    with pytest.raises(ReIDError, match="no history.csv"):
        read_curve(tmp_path, "test_mAP", "x")


def test_figure_draws_minutes_against_percent(tmp_path):
    (tmp_path / "history.csv").write_text(HISTORY)
    figure = plot_learning_curves([read_curve(tmp_path, "test_mAP", "batch-hard")], ylabel="mAP")
    (line,) = figure.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), [2.0, 245.0 / 60])
    np.testing.assert_allclose(line.get_ydata(), [41.0, 55.0])
    assert figure.axes[0].get_legend().get_texts()[0].get_text() == "batch-hard"
