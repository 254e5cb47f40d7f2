"""Keeps a run's small files, the ones results are read from, in a record folder under git.

Run folders hold models of tens of megabytes and live outside the repository, so they do not
outlast the machine they were trained on. The numbers and figures in docs/results.md need only
a few kilobytes of each run: its config, metrics, history (learning curves), cost, and the
per-query APs with the queries' identities (paired comparisons). This copies those:

    python experiments/keep_record.py RUN_FOLDER experiments/records/NAME

A record is a baseline for `compare_runs.py` (saved validation or test APs) and a curve for
`learning_curves.py`, exactly as its run folder was; it cannot be scored again (no model).
"""

import argparse
import shutil
import sys
from pathlib import Path

from siamese_reid.errors import ReIDError
from siamese_reid.runs import (
    BEST,
    CONFIG,
    DATASET_SUMMARY,
    HISTORY,
    METRICS,
    QUERY_AVERAGE_PRECISIONS,
    QUERY_EMBEDDINGS,
    RUN_COST,
    RUN_INFO,
)

# what compare_runs.py and learning_curves.py read, and what says how the run was made and cost
RECORD_FILES = (CONFIG, METRICS, HISTORY, RUN_COST, RUN_INFO, DATASET_SUMMARY, BEST, QUERY_AVERAGE_PRECISIONS)
REQUIRED = (CONFIG, METRICS, HISTORY, QUERY_AVERAGE_PRECISIONS)


def keep_record(run_dir, record_dir):
    """Copies the run's RECORD_FILES that exist into `record_dir`, a new folder, and its query
    identities (the pids of query_embeddings.npz, without the features or image paths); returns
    the names written."""
    import numpy as np

    run_dir, record_dir = Path(run_dir), Path(record_dir)
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise ReIDError(f"{run_dir} is not a finished run: no {', '.join(missing)}")
    if record_dir.exists():
        raise ReIDError(f"{record_dir} exists; a record is never overwritten")
    record_dir.mkdir(parents=True)
    written = []
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, record_dir / name)
            written.append(name)
    if (run_dir / QUERY_EMBEDDINGS).is_file():
        # the identities pair queries by person (the grouped standard error); the 128-d features
        # and the machine's image paths are not needed for that and would grow the repository
        with np.load(run_dir / QUERY_EMBEDDINGS, allow_pickle=False) as saved:
            pids = saved["pids"]
        np.savez_compressed(record_dir / QUERY_EMBEDDINGS, pids=pids)
        written.append(QUERY_EMBEDDINGS)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder")
    parser.add_argument("record", type=Path, help="the record folder to create, e.g. experiments/records/NAME")
    arguments = parser.parse_args()
    try:
        written = keep_record(arguments.run, arguments.record)
    except ReIDError as error:
        sys.exit(f"error: {error}")
    print(f"{arguments.record}: {', '.join(written)}")


if __name__ == "__main__":
    main()
