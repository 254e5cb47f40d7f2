"""Query by query, how much one run's mAP differs from another's on the same queries.

Two recipes a point or two apart cannot be told apart by their mAPs' standard errors (about
1.4 points on 362 validation queries), but their difference query by query varies far less,
because the hard queries are hard for both. Each RUN is a run folder:

    python experiments/compare_runs.py BASELINE_RUN CANDIDATE_RUN [CANDIDATE_RUN ...]
    python experiments/compare_runs.py --split test BASELINE_RUN CANDIDATE_RUN

--split validation (the default, what a recipe is chosen on) scores each run's last.keras again
on the validation identities its config held out (the same ones for runs with the same
data.validation_fraction and data.split_seed); --split test reads the per-query APs every run
wrote when it scored the test split (query_average_precisions.npy). --set applies config
overrides to every run before scoring, e.g. --set evaluation.rerank=true.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def validation_average_precisions(run_dir, overrides):
    """Each validation query's AP (NaN for a query without a match) for the run's last.keras."""
    from siamese_reid.config import load_config
    from siamese_reid.data.preparation import prepare_data
    from siamese_reid.errors import ReIDError
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.model.embedding import load_embedding_model
    from siamese_reid.runs import CONFIG, LAST_MODEL

    config = load_config(run_dir / CONFIG, overrides)
    if config.data.validation_fraction <= 0:
        raise ReIDError(f"{run_dir} was trained without a validation split (data.validation_fraction is 0)")
    with tempfile.TemporaryDirectory() as scratch:  # prepare_data records a summary; keep the run folder as it is
        config, data = prepare_data(config, scratch)
    tower = load_embedding_model(run_dir / LAST_MODEL)
    size = (config.data.image_height, config.data.image_width)
    evaluation = evaluate_model(tower, data.validation_query, data.validation_gallery, size, config.evaluation)
    return evaluation.ranking.query_average_precisions


def test_average_precisions(run_dir):
    from siamese_reid.errors import ReIDError
    from siamese_reid.runs import QUERY_AVERAGE_PRECISIONS

    path = run_dir / QUERY_AVERAGE_PRECISIONS
    if not path.is_file():
        raise ReIDError(f"{path} is missing: the run has not scored the test split")
    return np.load(path)


def paired_difference(baseline, candidate):
    """(mean, standard error) of candidate - baseline over the queries both scored, in mAP points."""
    from siamese_reid.errors import ReIDError

    if baseline.shape != candidate.shape:
        raise ReIDError(f"the runs were scored on different queries ({len(baseline)} and {len(candidate)})")
    scored = np.isfinite(baseline) & np.isfinite(candidate)
    differences = 100 * (candidate - baseline)[scored]
    return differences.mean(), differences.std(ddof=1) / np.sqrt(len(differences)), len(differences)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="the baseline run, then the candidates")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    arguments = parser.parse_args()

    from siamese_reid.errors import ReIDError

    if len(arguments.runs) < 2:
        parser.error("give a baseline run and at least one candidate")
    try:
        scores = [
            validation_average_precisions(run, arguments.overrides)
            if arguments.split == "validation"
            else test_average_precisions(run)
            for run in arguments.runs
        ]
        baseline = scores[0]
        print(f"{arguments.runs[0]}: {arguments.split} mAP {100 * np.nanmean(baseline):.1f}%")
        for run, candidate in zip(arguments.runs[1:], scores[1:], strict=True):
            mean, error, count = paired_difference(baseline, candidate)
            print(
                f"{run}: {arguments.split} mAP {100 * np.nanmean(candidate):.1f}%, "
                f"{mean:+.1f} ± {error:.1f} points query by query ({count} queries)"
            )
    except ReIDError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
