"""Keeps a run's small files, the ones results are read from, in a record folder under git.

Run folders hold models of tens of megabytes and live outside the repository, so they do not
outlast the machine they were trained on. The numbers and figures in docs/results.md need only
a few kilobytes of each run: its config, metrics, history (learning curves), cost, and the
per-query APs with the queries' identities (paired comparisons). This copies those:

    python experiments/keep_record.py RUN_FOLDER experiments/records/NAME

An evaluation folder (evaluate.py's) can be kept too; it has no history. A record is a baseline
for `compare_runs.py` (its saved APs) and, with a history, a curve for `learning_curves.py`,
exactly as its folder was; it cannot be scored again (no model). record.json says which folder
it came from, when, and the repository's commit at that moment.
"""

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from siamese_reid.errors import ReIDError
from siamese_reid.runs import (
    BEST,
    CONFIG,
    DATASET_SUMMARY,
    HISTORY,
    METRICS,
    QUERY_AVERAGE_PRECISIONS,
    QUERY_EMBEDDINGS,
    QUERY_IDENTITIES,
    RUN_COST,
    RUN_INFO,
    TIME_BUDGET,
    is_finished,
)

# what compare_runs.py and learning_curves.py read, and what says how the run was made and cost
RECORD_FILES = (
    CONFIG,
    METRICS,
    HISTORY,
    RUN_COST,
    RUN_INFO,
    TIME_BUDGET,  # a time-budgeted run's: the step timed and the epochs it decided
    DATASET_SUMMARY,
    BEST,
    QUERY_AVERAGE_PRECISIONS,
    QUERY_IDENTITIES,  # where the folder is itself a record
)
REQUIRED = (CONFIG, METRICS, QUERY_AVERAGE_PRECISIONS)
PROVENANCE = "record.json"


def keep_record(folder, record_dir):
    """Copies the RECORD_FILES that `folder` (a finished run, or an evaluation) has into
    `record_dir`, a new folder, with its query identities (query_embeddings.npz's pids, as
    query_identities.npy: no features, no image paths) and record.json; returns the names
    written. The record appears whole or not at all."""
    folder, record_dir = Path(folder), Path(record_dir)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing or not is_finished(folder):
        reason = f"no {', '.join(missing)}" if missing else "it is still training"
        raise ReIDError(f"{folder} is not a finished run or evaluation: {reason}")
    if record_dir.exists():
        raise ReIDError(f"{record_dir} exists; a record is never overwritten")
    try:
        return _write_record(folder, record_dir)
    except OSError as error:
        raise ReIDError(f"cannot write the record {record_dir}: {error.strerror or error}") from None


def _write_record(folder, record_dir):
    record_dir.parent.mkdir(parents=True, exist_ok=True)
    # built beside its destination (a hidden folder git ignores) and renamed at the end: a copy
    # that fails halfway leaves no half record that "never overwritten" would refuse to redo
    scratch = Path(tempfile.mkdtemp(dir=record_dir.parent, prefix=f".{record_dir.name}."))
    try:
        written = [name for name in RECORD_FILES if _copy_if_present(folder / name, scratch / name)]
        if QUERY_IDENTITIES not in written and (folder / QUERY_EMBEDDINGS).is_file():
            # the identities group queries by person (compare_runs' grouped standard error)
            np.save(scratch / QUERY_IDENTITIES, _query_identities(folder / QUERY_EMBEDDINGS))
            written.append(QUERY_IDENTITIES)
        provenance = {"folder": folder.name, "kept": datetime.date.today().isoformat(), "commit_kept_at": _commit()}
        (scratch / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        scratch.rename(record_dir)
    except BaseException:
        # only the folder mkdtemp made for this call, never the destination or the run folder
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return [*written, PROVENANCE]


def _copy_if_present(source, destination):
    if not source.is_file():
        return False
    try:
        shutil.copy2(source, destination)
    except OSError as error:
        raise ReIDError(f"cannot copy {source}: {error.strerror}") from None
    return True


def _query_identities(path):
    try:
        with np.load(path, allow_pickle=False) as saved:
            return saved["pids"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ReIDError(f"{path} cannot be read as saved query embeddings: {error}") from None


def _commit():
    """The repository's commit when the record was kept, or None: not necessarily the code that
    trained the run, which may be older."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
    except OSError:
        return None
    return result.stdout.strip() or None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a finished run folder, or an evaluation folder")
    parser.add_argument("record", type=Path, help="the record folder to create, e.g. experiments/records/NAME")
    arguments = parser.parse_args()
    try:
        written = keep_record(arguments.folder, arguments.record)
    except ReIDError as error:
        sys.exit(f"error: {error}")
    print(f"{arguments.record}: {', '.join(written)}")


if __name__ == "__main__":
    main()
