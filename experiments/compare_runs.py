"""Query by query, how much one run's mAP differs from another's on the same queries.

Two recipes a point or two apart cannot be told apart by their mAPs' standard errors (about
1.4 points on 362 validation queries), but their difference query by query varies far less,
because the hard queries are hard for both. The ± is over queries only: it says nothing of how
much a second training run with another seed would differ. The first RUN is the baseline:

    python experiments/compare_runs.py BASELINE_RUN CANDIDATE_RUN [CANDIDATE_RUN ...]
    python experiments/compare_runs.py RUN RUN --candidate-set evaluation.rerank=true
    python experiments/compare_runs.py --split test BASELINE_RUN CANDIDATE_RUN

--split validation (the default, what a recipe is chosen on) scores each run folder's last.keras
again on the validation identities its config held out; the runs must hold out the same ones
(same training data, data.validation_fraction and data.split_seed). --set applies config
overrides to every run before scoring, --candidate-set to the candidates only (so a run against
itself re-ranked measures what re-ranking adds). --split test reads the per-query APs that a
run, or an evaluation folder evaluate.py wrote, saved when it scored the test split
(query_average_precisions.npy); the folders must have scored the same query and gallery folders.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from siamese_reid.errors import ReIDError  # noqa: E402  (pure Python; TensorFlow loads only to score)

# What must agree for two folders' queries to be the same ones.
SAME_QUERIES = {
    "validation": ("root", "layout", "train_dir", "validation_fraction", "split_seed"),
    "test": ("root", "layout", "query_dir", "gallery_dir"),
}


def read_config(folder, overrides=()):
    from siamese_reid.config import load_config
    from siamese_reid.runs import CONFIG

    if not (folder / CONFIG).is_file():
        raise ReIDError(f"{folder} holds no {CONFIG}: it is not a run or evaluation folder")
    return load_config(folder / CONFIG, overrides)


def check_same_queries(folders, configs, split):
    """Refuses folders whose configs score different queries (a length check would pair the
    362 queries of one validation split with the 362 of another)."""
    keys = SAME_QUERIES[split]
    first = [getattr(configs[0].data, key) for key in keys]
    for folder, config in zip(folders[1:], configs[1:], strict=True):
        for key, expected in zip(keys, first, strict=True):
            if getattr(config.data, key) != expected:
                raise ReIDError(
                    f"{folder} scored other {split} queries than {folders[0]}: "
                    f"data.{key} is {getattr(config.data, key)!r}, not {expected!r}"
                )


def validation_average_precisions(run_dir, config):
    """Each validation query's AP (NaN for a query without a match) for the run's last.keras."""
    from siamese_reid.data.preparation import prepare_data
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.model.building import image_size
    from siamese_reid.model.embedding import load_embedding_model
    from siamese_reid.runs import LAST_MODEL

    if config.data.validation_fraction <= 0:
        raise ReIDError(f"{run_dir} was trained without a validation split (data.validation_fraction is 0)")
    tower = load_embedding_model(run_dir / LAST_MODEL)
    # prepare_data writes a summary and converts unusual images into its folder: a scratch one,
    # kept until scoring has read them, so the run folder stays as it is.
    with tempfile.TemporaryDirectory() as scratch:
        config, data = prepare_data(config, scratch)
        evaluation = evaluate_model(
            tower, data.validation_query, data.validation_gallery, image_size(config), config.evaluation
        )
    return evaluation.ranking.query_average_precisions


def saved_test_average_precisions(folder):
    from siamese_reid.runs import QUERY_AVERAGE_PRECISIONS

    path = folder / QUERY_AVERAGE_PRECISIONS
    if not path.is_file():
        raise ReIDError(f"{path} is missing: the folder has not scored the test split")
    return np.load(path)


def paired_difference(baseline, candidate):
    """candidate - baseline over the queries both scored, in mAP points.

    Returns:
      (mean difference, its standard error over the queries, the number of queries).
    """
    if baseline.shape != candidate.shape:
        raise ReIDError(f"the runs were scored on different queries ({len(baseline)} and {len(candidate)})")
    scored = np.isfinite(baseline) & np.isfinite(candidate)
    if scored.sum() < 2:
        raise ReIDError(f"the runs share {scored.sum()} scored queries; a difference needs at least 2")
    differences = 100 * (candidate - baseline)[scored]
    return differences.mean(), differences.std(ddof=1) / np.sqrt(len(differences)), len(differences)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="the baseline run, then the candidates")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--candidate-set", dest="candidate_overrides", action="append", default=[])
    arguments = parser.parse_args()
    if len(arguments.runs) < 2:
        parser.error("give a baseline run and at least one candidate")
    if arguments.split == "test" and (arguments.overrides or arguments.candidate_overrides):
        parser.error("--set and --candidate-set change how validation is scored; --split test reads saved scores")

    try:
        overrides = [arguments.overrides] + [arguments.overrides + arguments.candidate_overrides] * (
            len(arguments.runs) - 1
        )
        configs = [read_config(run, own) for run, own in zip(arguments.runs, overrides, strict=True)]
        check_same_queries(arguments.runs, configs, arguments.split)
        scores = [
            validation_average_precisions(run, config)
            if arguments.split == "validation"
            else saved_test_average_precisions(run)
            for run, config in zip(arguments.runs, configs, strict=True)
        ]
        baseline = scores[0]
        shown = f" ({' '.join(arguments.overrides)})" if arguments.overrides else ""
        print(f"{arguments.runs[0]}{shown}: {arguments.split} mAP {100 * np.nanmean(baseline):.1f}%")
        shown = " ".join(arguments.overrides + arguments.candidate_overrides)
        for run, candidate in zip(arguments.runs[1:], scores[1:], strict=True):
            mean, error, count = paired_difference(baseline, candidate)
            print(
                f"{run}{f' ({shown})' if shown else ''}: {arguments.split} mAP {100 * np.nanmean(candidate):.1f}%, "
                f"{mean:+.1f} ± {error:.1f} points query by query ({count} queries)"
            )
    except ReIDError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
