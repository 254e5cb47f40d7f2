"""Learning curves across runs: a ranking score against training wall time.

Reads only what run folders hold: history.csv's `elapsed_seconds` (the run's training time at the
end of each epoch, periodic scoring included, summed over the sessions of a resumed run) and the
scores periodic evaluation logged (`val_mAP`, `test_mAP`, ...). Comparing recipes at equal wall
time, rather than at equal epochs, is what a budget of hours on one machine asks.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.runs import HISTORY, read_history
from siamese_reid.runs import HISTORY_ELAPSED as ELAPSED


@dataclass(frozen=True)
class Curve:
    """One line of the figure: `values` (fractions) at `seconds` of training."""

    label: str
    seconds: np.ndarray
    values: np.ndarray


def read_curve(run_dir, metric, label):
    """The epochs of `run_dir` that scored `metric` (e.g. "test_mAP"), against training time.

    Raises:
      ReIDError: the run has no history, no wall-time column, or never scored `metric`.
    """
    history = read_history(Path(run_dir) / HISTORY)
    if not history:
        raise ReIDError(f"{run_dir} has no {HISTORY}: is it a run folder?")
    if ELAPSED not in history:
        raise ReIDError(f"{Path(run_dir) / HISTORY} has no '{ELAPSED}' column: its run did not record wall time")
    if metric not in history:
        scored = sorted(key for key in history if key.endswith("_mAP") or key.endswith("_rank1"))
        raise ReIDError(f"{run_dir} never scored '{metric}'; it scored {scored or 'nothing'}")
    scored = ~np.isnan(history[metric])
    return Curve(label, history[ELAPSED][scored], history[metric][scored])


def plot_learning_curves(curves, ylabel="mAP", title="Learning curves"):
    """One figure: each curve's score (in %) against training time (in minutes)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2))
    axis = figure.subplots()
    for curve in curves:
        axis.plot(curve.seconds / 60, 100 * curve.values, marker="o", markersize=3, label=curve.label)
    axis.set(xlabel="training wall time (minutes, periodic scoring included)", ylabel=f"{ylabel} (%)", title=title)
    axis.set_xlim(left=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
