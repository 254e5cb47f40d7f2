"""experiments/compare_runs.py: the query-by-query difference docs/results.md quotes."""

import subprocess
import sys
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT_ROOT / "experiments" / "compare_runs.py"


def write_run(folder, average_precisions):
    folder.mkdir()
    np.save(folder / "query_average_precisions.npy", np.array(average_precisions, dtype=np.float64))
    return folder


def compare(*arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True)


def test_the_difference_is_taken_query_by_query_over_queries_both_runs_scored(tmp_path):
    # Query 3 has no match (NaN) in either run and counts in neither mean nor difference.
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0, 0.25, np.nan])
    candidate = write_run(tmp_path / "candidate", [1.0, 1.0, 0.5, np.nan])
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode == 0, result.stderr
    # by hand: differences 50, 0, 25 points; mean 25; sample standard deviation 25; / sqrt(3)
    assert "test mAP 58.3%" in result.stdout  # (0.5 + 1 + 0.25) / 3
    assert "test mAP 83.3%" in result.stdout
    assert "+25.0 ± 14.4 points query by query (3 queries)" in result.stdout


def test_runs_scored_on_different_queries_are_refused_in_one_line(tmp_path):
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0])
    candidate = write_run(tmp_path / "candidate", [0.5, 1.0, 0.25])
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: the runs were scored on different queries (2 and 3)"


def test_a_run_that_never_scored_the_test_split_is_named(tmp_path):
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0])
    (tmp_path / "unscored").mkdir()
    result = compare("--split", "test", baseline, tmp_path / "unscored")
    assert result.returncode != 0
    assert "unscored/query_average_precisions.npy is missing" in result.stderr
