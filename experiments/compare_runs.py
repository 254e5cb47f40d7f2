"""Query by query, how much one run's mAP differs from another's on the same queries.

Two recipes a point or two apart cannot be told apart by their mAPs' standard errors (about
1.4 points on 362 validation queries), but their difference query by query varies far less,
because the hard queries are hard for both. The first ± treats queries as independent; the
second groups them by identity (several queries of one person share its gallery images, so
their differences move together), and is the one to trust when the two differ. Neither says
how much a second training run with another seed would differ. The first RUN is the baseline:

    python experiments/compare_runs.py BASELINE_RUN CANDIDATE_RUN [CANDIDATE_RUN ...]
    python experiments/compare_runs.py RUN RUN --candidate-set evaluation.rerank=true
    python experiments/compare_runs.py --split test BASELINE_RUN CANDIDATE_RUN

--split validation (the default, what a recipe is chosen on) pairs the validation identities the
runs' configs held out; the runs must hold out the same ones (same training data,
data.validation_fraction and data.split_seed). Tuning runs (`evaluation.score_test: false`)
saved their last epoch's per-query validation APs with the protocol they were scored with, and a
folder's are read when they are what its config.yaml scores and no --set or --candidate-set
applies to it; otherwise its last.keras is scored again. So a run's record (its small files
without the model, experiments/keep_record.py) stays a baseline after the run folder is gone.
--set applies config overrides to every run before scoring, --candidate-set to the candidates
only (so a run against itself re-ranked measures what re-ranking adds). --split test reads the
per-query APs that a run, or an evaluation folder evaluate.py wrote, saved when it scored the
test split (query_average_precisions.npy); the folders must have scored the same query and
gallery folders, and a run that reported on validation (`evaluation.score_test: false`) is
refused.

Each line says how many epochs the folder trained (its history.csv), and a note says when the
runs trained different epochs: a time budget trains fewer on a slower CPU, and such a
difference is not the recipe's alone.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from siamese_reid.errors import ReIDError  # noqa: E402  (pure Python; TensorFlow loads only to score)
from siamese_reid.files import resolve_folder  # noqa: E402  (pure Python too)
from siamese_reid.runs import (  # noqa: E402  (pure Python too)
    LAST_MODEL,
    METRICS,
    QUERY_AVERAGE_PRECISIONS,
    QUERY_EMBEDDINGS,
    QUERY_IDENTITIES,
    epochs_trained,
    load_run_config,
)

# What must agree for two folders' queries to be the same ones: the data keys that can change
# which images a split holds (for some layouts only). The query identities then catch much of
# the rest (demo settings, a changed data folder), not a gallery that differs alone.
SAME_QUERIES = {
    "validation": (
        "root",
        "layout",
        "train_dir",
        "validation_fraction",
        "split_seed",
        "test_fraction",
        "cuhk03_subset",
        "msmt17_val",
    ),
    "test": ("root", "layout", "query_dir", "gallery_dir", "test_fraction", "cuhk03_subset"),
}


# The entries of metrics.json's "protocol" that change a folder's scores.
SCORING_SETTINGS = ("ap_definition", "distance", "flip_test")


class Comparison(NamedTuple):
    run: Path
    mAP: float  # in points, over the queries this run scored
    difference: float | None  # against the baseline, query by query, in mAP points; None for it
    standard_error: float | None  # over queries, as if independent
    identity_standard_error: float | None  # grouped by query identity; None where identities are unknown
    queries: int | None
    epochs: int  # what history.csv says the folder trained; 0 where it has none (an evaluation folder)


# The data keys above that are folders: one folder spelled two ways (../shared/data/x from the
# project root, /work/shared/data/x) is the same folder.
FOLDER_KEYS = ("root", "train_dir", "query_dir", "gallery_dir")


def data_setting(config, key):
    """config.data's `key` as compared: a folder resolved from here (relative ones are read from
    where this runs, as train.py read them from where it ran)."""
    value = getattr(config.data, key)
    return resolve_folder(value) if key in FOLDER_KEYS and value else value


def check_same_queries(folders, configs, split):
    """Refuses folders whose configs score different queries (a length check would pair the
    362 queries of one validation split with the 362 of another)."""
    keys = SAME_QUERIES[split]
    first = [data_setting(configs[0], key) for key in keys]
    for folder, config in zip(folders[1:], configs[1:], strict=True):
        for key, expected in zip(keys, first, strict=True):
            if data_setting(config, key) != expected:
                raise ReIDError(
                    f"{folder} scored other {split} queries than {folders[0]}: "
                    f"data.{key} is {getattr(config.data, key)!r}, not {getattr(configs[0].data, key)!r}"
                )


def validation_average_precisions(runs, configs, reasons):
    """Each validation query's AP (NaN for a query without a match), for each run's last.keras
    scored with its config's evaluation settings, and the queries' identities. The runs hold
    out the same identities (`check_same_queries`), so the data is read and scanned once, not
    once per run. `reasons` say why each run is scored again, for the error when it cannot be."""

    if configs[0].data.validation_fraction <= 0:
        raise ReIDError(f"{runs[0]} was trained without a validation split (data.validation_fraction is 0)")
    for run, reason in zip(runs, reasons, strict=True):  # before TensorFlow loads, in one line
        if not (run / LAST_MODEL).is_file():
            raise ReIDError(f"{run} has no {LAST_MODEL} to score again, and it must be: {reason}")

    from siamese_reid.data.preparation import prepare_data
    from siamese_reid.evaluation.evaluator import evaluate_model
    from siamese_reid.model.building import image_size
    from siamese_reid.model.embedding import load_embedding_model

    # prepare_data writes a summary and converts unusual images into its folder: a scratch one,
    # kept until scoring has read them, so the run folders stay as they are.
    with tempfile.TemporaryDirectory() as scratch:
        _, data = prepare_data(configs[0], scratch)
        scores = [
            evaluate_model(
                load_embedding_model(run / LAST_MODEL),
                data.validation_query,
                data.validation_gallery,
                image_size(config),
                config.evaluation,
            ).ranking.query_average_precisions
            for run, config in zip(runs, configs, strict=True)
        ]
    return scores, np.array([sample.pid for sample in data.validation_query])


def saved_scores_problem(folder, config, split):
    """Why the per-query APs `folder` saved are not what scoring its model on `split` with
    `config`'s evaluation settings gives; None when they are. metrics.json, written with them,
    says which split and protocol they are (folders older than its "split" key: test), whatever
    the config says now."""
    import json

    from siamese_reid.evaluation.evaluator import describe_distance
    from siamese_reid.evaluation.protocol import protocol_record

    if not (folder / METRICS).is_file():  # written last: without it the folder's report is not whole
        return f"{folder} has no {METRICS}: it has not finished a report"
    metrics = json.loads((folder / METRICS).read_text())
    saved = metrics.get("split", "test")
    if saved != split:
        score_test = "false" if saved == "validation" else "true"
        return (
            f"{folder} reported on the {saved} split (evaluation.score_test: {score_test}): "
            f"its saved scores are not {split}'s"
        )
    path = folder / QUERY_AVERAGE_PRECISIONS
    if not path.is_file():
        return f"{path} is missing: the folder has not scored the {split} split"
    settings = config.evaluation
    # through JSON, as metrics.json holds it (tuples become lists); only the entries that change
    # the scores, and only those the folder recorded (older reports recorded fewer)
    expected = json.loads(json.dumps(protocol_record(settings, describe_distance(settings.metric, settings.rerank))))
    recorded = metrics.get("protocol", {})
    changed = [key for key in SCORING_SETTINGS if key in recorded and recorded[key] != expected[key]]
    if changed:
        return (
            f"{folder}'s saved scores were made with another {' and '.join(changed)} than its config.yaml gives "
            f"({', '.join(f'{recorded[key]!r}, not {expected[key]!r}' for key in changed)})"
        )
    count = len(np.load(path))
    if count != metrics.get("num_queries", count):
        return f"{path} holds {count} scores, not one for each of the {metrics['num_queries']} queries in metrics.json"
    return None


def saved_average_precisions(folder, config, split):
    problem = saved_scores_problem(folder, config, split)
    if problem:
        raise ReIDError(problem)
    return np.load(folder / QUERY_AVERAGE_PRECISIONS)


def validation_scores(runs, configs, overridden):
    """Each run's per-query validation APs: those it saved, where they are what its config scores
    and no --set changes it (`overridden`), else its last.keras scored again; the queries'
    identities where scoring again knows them (None otherwise); and the runs whose saved APs
    were read."""
    reasons = [
        "--set or --candidate-set changes how it is scored"
        if changed
        else saved_scores_problem(run, config, "validation")
        for run, config, changed in zip(runs, configs, overridden, strict=True)
    ]
    rescored = [index for index, reason in enumerate(reasons) if reason]
    # no reason: saved_scores_problem has found them to be what the run's config scores
    scores = [
        None if reason else np.load(run / QUERY_AVERAGE_PRECISIONS) for run, reason in zip(runs, reasons, strict=True)
    ]
    identities = None
    if rescored:
        scored, identities = validation_average_precisions(
            [runs[index] for index in rescored],
            [configs[index] for index in rescored],
            [reasons[index] for index in rescored],
        )
        for index, average_precisions in zip(rescored, scored, strict=True):
            scores[index] = average_precisions
    return scores, identities, [run for run, reason in zip(runs, reasons, strict=True) if not reason]


def saved_query_identities(folder):
    """The identities of the queries a folder scored, from the query embeddings it saved (or, in
    a record, the identities kept without them); None for a folder without either."""

    folder = Path(folder)
    if (folder / QUERY_IDENTITIES).is_file():
        return np.load(folder / QUERY_IDENTITIES)
    if not (folder / QUERY_EMBEDDINGS).is_file():
        return None
    with np.load(folder / QUERY_EMBEDDINGS, allow_pickle=False) as saved:
        return saved["pids"]


def paired_difference(baseline, candidate, identities=None):
    """candidate - baseline over the queries both scored, in mAP points.

    The grouped standard error is the cluster-robust one of a mean (clusters: the queries of
    one identity), with the small-sample factor G / (G - 1): sqrt(G / (G - 1) * sum over
    identities of (sum of their queries' d - mean)^2) / N. With one query per identity it is the
    standard error over queries.

    Returns:
      (mean difference, its standard error over the queries, the same grouped by `identities`
      (each query's identity; None gives None), the number of queries).
    """
    if baseline.shape != candidate.shape:
        raise ReIDError(f"the runs were scored on different queries ({len(baseline)} and {len(candidate)})")
    scored = np.isfinite(baseline) & np.isfinite(candidate)
    if scored.sum() < 2:
        raise ReIDError(f"the runs share {scored.sum()} scored queries; a difference needs at least 2")
    differences = 100 * (candidate - baseline)[scored]
    mean, count = differences.mean(), len(differences)
    grouped = None
    if identities is not None:
        _, group = np.unique(np.asarray(identities)[scored], return_inverse=True)
        groups = group.max() + 1
        if groups > 1:
            sums = np.bincount(group, weights=differences - mean)
            grouped = np.sqrt(groups / (groups - 1) * np.sum(sums**2)) / count
    return mean, differences.std(ddof=1) / np.sqrt(count), grouped, count


def check_same_people(saved_runs, scored_identities, count):
    """Refuses saved scores whose queries were other people, query by query, than the other
    folders' or than the queries scored again (`scored_identities`, None when none were): the
    configs agreeing is not enough where the data changed since, or a demo was made otherwise."""
    reference, source = scored_identities, "the queries scored again"
    for run in saved_runs:
        kept = saved_query_identities(run)
        if kept is None or len(kept) != count:  # none kept, or embeddings of another evaluation
            if scored_identities is not None:
                raise ReIDError(f"{run} kept no query identities to check its saved scores against {source}")
            continue
        if reference is None:
            reference, source = kept, str(run)
        elif not np.array_equal(reference, kept):
            raise ReIDError(f"{run} scored other queries than {source}: their query identities differ")


def compare_runs(runs, split="validation", overrides=(), candidate_overrides=()):
    """The baseline (runs[0]) and each candidate: a `Comparison` per run, in order.

    `overrides` apply to every run's config before it is scored, `candidate_overrides` to the
    candidates only; both only with split "validation", where they make the runs they apply to
    be scored again (the test split's scores are only ever the saved ones).
    """

    runs = [Path(run) for run in runs]
    if split == "test" and (overrides or candidate_overrides):
        raise ReIDError("--set and --candidate-set change how validation is scored; --split test reads saved scores")
    configs = [load_run_config(runs[0], overrides)]
    configs += [load_run_config(run, [*overrides, *candidate_overrides]) for run in runs[1:]]
    check_same_queries(runs, configs, split)
    if split == "validation":
        overridden = [bool(overrides)] + [bool(overrides or candidate_overrides)] * (len(runs) - 1)
        scores, identities, saved_runs = validation_scores(runs, configs, overridden)
    else:
        scores = [saved_average_precisions(run, config, split) for run, config in zip(runs, configs, strict=True)]
        identities, saved_runs = None, runs
    check_same_people(saved_runs, identities, len(scores[0]))
    if identities is None:
        identities = next(
            (
                kept
                for kept in map(saved_query_identities, saved_runs)
                if kept is not None and len(kept) == len(scores[0])
            ),
            None,
        )
    comparisons = [Comparison(runs[0], 100 * np.nanmean(scores[0]), None, None, None, None, epochs_trained(runs[0]))]
    for run, candidate in zip(runs[1:], scores[1:], strict=True):
        difference = paired_difference(scores[0], candidate, identities)
        comparisons.append(Comparison(run, 100 * np.nanmean(candidate), *difference, epochs_trained(run)))
    return comparisons


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="the baseline run, then the candidates")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--candidate-set", dest="candidate_overrides", action="append", default=[])
    arguments = parser.parse_args()
    if len(arguments.runs) < 2:
        parser.error("give a baseline run and at least one candidate")

    try:
        comparisons = compare_runs(arguments.runs, arguments.split, arguments.overrides, arguments.candidate_overrides)
    except ReIDError as error:
        sys.exit(f"error: {error}")
    baseline_settings = " ".join(arguments.overrides)
    candidate_settings = " ".join(arguments.overrides + arguments.candidate_overrides)
    for comparison in comparisons:
        settings = baseline_settings if comparison.difference is None else candidate_settings
        line = f"{comparison.run}{f' ({settings})' if settings else ''}: {arguments.split} mAP {comparison.mAP:.1f}%"
        if comparison.epochs:
            line += f" after {comparison.epochs} epochs"
        if comparison.difference is not None:
            line += (
                f", {comparison.difference:+.1f} ± {comparison.standard_error:.1f} points query by query "
                f"({comparison.queries} queries)"
            )
            if comparison.identity_standard_error is not None:
                line += f", ± {comparison.identity_standard_error:.1f} grouped by identity"
        print(line)
    epochs = sorted({comparison.epochs for comparison in comparisons if comparison.epochs})
    if len(epochs) > 1:  # a time budget decides epochs per CPU: a difference may be training length, not recipe
        print(f"note: the runs trained different epochs ({', '.join(map(str, epochs))}); the differences include that")


if __name__ == "__main__":
    main()
