"""Loading a finished run and the analyses the notebooks show. Pure numpy; no plotting.

Everything here reads the files a run leaves (config.yaml, history.csv, metrics.json,
*_embeddings.npz), so it works on any run folder, including ones copied from another machine.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import yaml

from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.distances import QueryGalleryDistances
from siamese_reid.evaluation.embeddings import load_embeddings
from siamese_reid.evaluation.evaluator import RERANKED, scoring_distance_rows
from siamese_reid.runs import (
    CONFIG,
    DATASET_SUMMARY,
    GALLERY_EMBEDDINGS,
    HISTORY,
    IDENTITY_NAMES,
    METRICS,
    QUERY_AVERAGE_PRECISIONS,
    QUERY_EMBEDDINGS,
    RUN_INFO,
    read_history,
    read_threshold,
)


@dataclasses.dataclass(frozen=True)
class Run:
    path: Path
    config: dict
    dataset_summary: dict
    history: dict
    metrics: dict
    query_features: np.ndarray
    query_samples: list
    gallery_features: np.ndarray
    gallery_samples: list
    query_average_precisions: np.ndarray  # as scored for metrics.json; NaN for skipped queries
    run_info: dict = dataclasses.field(default_factory=dict)
    threshold: dict | None = None  # threshold.json, when the run has one
    identity_names: dict = dataclasses.field(default_factory=dict)  # pid -> folder name


def newest_run(runs_dir="runs"):
    """The most recently finished run (one with metrics.json) under `runs_dir`."""
    candidates = sorted(Path(runs_dir).glob(f"*/{METRICS}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ReIDError(f"no finished run under '{runs_dir}': run python train.py first")
    return candidates[-1].parent


def load_run(path):
    path = Path(path)
    if not (path / METRICS).is_file():
        raise ReIDError(f"'{path}' is not a finished run (no {METRICS})")
    query_features, query_samples = load_embeddings(path / QUERY_EMBEDDINGS)
    gallery_features, gallery_samples = load_embeddings(path / GALLERY_EMBEDDINGS)
    return Run(
        path=path,
        config=yaml.safe_load((path / CONFIG).read_text()),
        dataset_summary=json.loads((path / DATASET_SUMMARY).read_text()),
        history=read_history(path / HISTORY),
        metrics=json.loads((path / METRICS).read_text()),
        query_features=query_features,
        query_samples=query_samples,
        gallery_features=gallery_features,
        gallery_samples=gallery_samples,
        query_average_precisions=np.load(path / QUERY_AVERAGE_PRECISIONS),
        run_info=json.loads((path / RUN_INFO).read_text()) if (path / RUN_INFO).is_file() else {},
        threshold=read_threshold(path),
        identity_names=_identity_names(path),
    )


def _identity_names(path):
    names_file = path / IDENTITY_NAMES
    if not names_file.is_file():
        return {}
    return {int(pid): name for pid, name in json.loads(names_file.read_text()).items()}


def run_distances(run):
    """The query x gallery distances the run's metrics were scored on, recomputed from its
    saved embeddings a query at a time (`rows[query_index]`, never the whole matrix):
    re-ranked ones when the evaluation re-ranked, so the retrieval browser and the failure
    cases show the ranking that was scored."""
    distance = run.metrics.get("protocol", {}).get("distance")
    if distance is None:
        raise ReIDError(
            f"'{run.path}' was evaluated by an older version: evaluate it again "
            "(experiment.evaluate; python evaluate.py --run)"
        )
    if distance["name"] != RERANKED:
        return scoring_distance_rows(run.query_features, run.gallery_features, distance["name"], rerank=False)
    parameters = {key: distance[key] for key in ("k1", "k2", "lambda_value")}
    return scoring_distance_rows(run.query_features, run.gallery_features, None, True, parameters)


def search_distances(run):
    """Query x gallery distances in the plain metric a search uses, as rows computed on demand
    (never re-ranked: re-ranking needs the whole query set, a single search has one query)."""
    distance = run.metrics.get("protocol", {}).get("distance", {"name": "euclidean"})
    metric = "euclidean" if distance["name"] == RERANKED else distance["name"]
    return QueryGalleryDistances(run.query_features, run.gallery_features, metric)


def worst_queries(query_average_precisions, count):
    """Indices of the `count` queries with the lowest AP (skipped queries, NaN, excluded)."""
    scored = np.flatnonzero(np.isfinite(query_average_precisions))
    order = np.argsort(query_average_precisions[scored], kind="stable")
    return scored[order[:count]]


def sample_indices(count, maximum, seed=0):
    """Up to `maximum` of range(count), drawn uniformly without replacement, in order: what a
    plot of a large set shows (a scatter of millions of points shows nothing more)."""
    if count <= maximum:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, maximum, replace=False))


def project_2d(features):
    """PCA projection to two dimensions (centred; sign fixed for reproducible plots)."""
    centred = np.asarray(features, dtype=np.float64) - np.mean(features, axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    axes = components[:2]
    axes *= np.sign(axes[np.arange(len(axes)), np.argmax(np.abs(axes), axis=1)])[:, None]
    return centred @ axes.T
