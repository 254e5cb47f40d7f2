"""k-reciprocal re-ranking: time and peak memory of the sparse KReciprocalReranker vs the dense algorithm.

Cases (synthetic identities and cameras, clustered 128-d embeddings: the package's default
`model.embedding_dim`; the authors' parameters k1=20, k2=6, lambda=0.3):
  small         1,000 queries x 5,000 gallery, with the dense baseline run beside it
  msmt-quarter  2,915 x 20,540 (a quarter of MSMT17 on each side)
  msmt          11,659 x 82,161 (MSMT17 test set sizes)

    python benchmarks/bench_rerank.py --cases small          # the comparison (under a minute)
    nice -n 10 python benchmarks/bench_rerank.py --cases msmt  # a few minutes on 2 cores

The re-ranked distances are streamed: `distances(start, stop)` for chunks of queries, each
chunk scored by `evaluate_ranking` and dropped, as a streaming evaluator does, so no query x
gallery matrix is held. Memory is the process's high-water mark (VmHWM from /proc/self/status,
reset before each measured step through /proc/self/clear_refs; Linux), so "peak" includes the
features and everything else alive at the time, and "extra" is its rise during the step. The
dense algorithm's memory at MSMT17 size is computed (20 (Q + G)^2 bytes), not run.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from siamese_reid.evaluation.distances import compute_distances
from siamese_reid.evaluation.ranking import evaluate_ranking
from siamese_reid.evaluation.rerank import RERANK_PARAMETERS, KReciprocalReranker

CASES = {
    "small": dict(num_query=1000, num_gallery=5000, num_ids=300, num_cameras=6),
    "msmt-quarter": dict(num_query=2915, num_gallery=20540, num_ids=765, num_cameras=15),
    "msmt": dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cameras=15),
}
DENSE_LIMIT = 20000  # images; the dense baseline needs 20 N^2 bytes (8 GB at this size)


def make_case(num_query, num_gallery, num_ids, num_cameras, dim=128, seed=0):
    """Features clustered by identity (like a trained model's), identities and cameras."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim)).astype(np.float32)
    pids = rng.integers(1, num_ids + 1, num_query + num_gallery)
    features = centres[pids] + rng.normal(scale=1.6, size=(len(pids), dim)).astype(np.float32)
    camids = rng.integers(1, num_cameras + 1, len(pids))
    return features[:num_query], features[num_query:], pids[:num_query], pids[num_query:], camids


def dense_baseline(query_features, gallery_features, k1, k2, lambda_value):
    """BASELINE, not the library: the authors' dense algorithm as the package ran it before the
    sparse re-ranker (five (Q + G)^2 float32/int32 matrices at its peak)."""
    features = np.concatenate([query_features, gallery_features]).astype(np.float32)
    squared = np.square(features).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * features @ features.T, 0.0)
    distances = (distances / distances.max(axis=0, keepdims=True)).T.copy()
    num_all, num_query = len(features), len(query_features)
    ranks = np.argsort(distances, axis=1, kind="stable").astype(np.int32)

    def reciprocal(index, k):
        forward = ranks[index, : k + 1]
        return forward[np.any(ranks[forward, : k + 1] == index, axis=1)]

    encoding = np.zeros_like(distances)
    for index in range(num_all):
        members = reciprocal(index, k1)
        expansion = [members]
        for candidate in members:
            candidate_members = reciprocal(candidate, int(round(k1 / 2)))
            if np.intersect1d(candidate_members, members).size > 2 / 3 * candidate_members.size:
                expansion.append(candidate_members)
        members = np.unique(np.concatenate(expansion))
        weights = np.exp(-distances[index, members])
        encoding[index, members] = weights / weights.sum()
    if k2 > 1:
        expanded = np.zeros_like(encoding)
        for column in range(k2):
            expanded += encoding[ranks[:, column]]
        encoding = expanded / k2
    jaccard = np.empty((num_query, num_all), dtype=np.float32)
    for index in range(num_query):
        support = np.flatnonzero(encoding[index])
        shared = np.minimum(encoding[index, support][None, :], encoding[:, support]).sum(axis=1)
        jaccard[index] = 1.0 - shared / (2.0 - shared)
    final = jaccard * (1 - lambda_value) + distances[:num_query] * lambda_value
    return final[:, num_query:]


def _status_bytes(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(function, *args, **kwargs):
    """(result, seconds, peak GiB of the process during the call, rise of that peak above the start)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status_bytes("VmRSS")
    started = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - started
    peak = _status_bytes("VmHWM")
    return result, seconds, peak / 2**30, (peak - before) / 2**30


def streamed_ranking(distance_chunks, query_pids, gallery_pids, query_camids, gallery_camids, chunk_size=512):
    """Scores every chunk of queries as it comes; returns (rank-1, mAP) over the valid queries."""
    average_precisions, first_ranks = [], []
    for start in range(0, len(query_pids), chunk_size):
        stop = min(start + chunk_size, len(query_pids))
        rows = slice(start, stop)
        result = evaluate_ranking(
            distance_chunks(start, stop), query_pids[rows], gallery_pids, query_camids[rows], gallery_camids
        )
        average_precisions.append(result.query_average_precisions)
        first_ranks.append(result.query_first_match_ranks)
    first_ranks = np.concatenate(first_ranks)
    return float(np.mean(first_ranks[first_ranks >= 0] == 0)), float(np.nanmean(np.concatenate(average_precisions)))


def plain_scores(query_features, gallery_features, labels):
    """(rank-1, mAP) of plain euclidean distances, for context."""
    return streamed_ranking(
        lambda start, stop: compute_distances(query_features[start:stop], gallery_features, "euclidean"), *labels
    )


def run_sparse(query_features, gallery_features, labels):
    """Prepares the re-ranker and streams its distances into the ranking; times each part."""
    started = time.perf_counter()
    reranker = KReciprocalReranker(query_features, gallery_features, **RERANK_PARAMETERS, verbose=True)
    timings = {"prepare_seconds": time.perf_counter() - started, "distances_seconds": 0.0}

    def timed_distances(start, stop):
        began = time.perf_counter()
        chunk = reranker.distances(start, stop)
        timings["distances_seconds"] += time.perf_counter() - began
        return chunk

    return reranker, timings, streamed_ranking(timed_distances, *labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["small", "msmt"], choices=list(CASES))
    parser.add_argument("--output", default="benchmarks/results/rerank.json")
    arguments = parser.parse_args()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "parameters": RERANK_PARAMETERS}
    report["cases"] = {}
    for name in arguments.cases:
        query_features, gallery_features, query_pids, gallery_pids, camids = make_case(**CASES[name])
        num_query, num_gallery = len(query_features), len(gallery_features)
        labels = (query_pids, gallery_pids, camids[:num_query], camids[num_query:])
        num_images = num_query + num_gallery
        dense_gib = 20 * num_images**2 / 2**30
        print(f"{name}: {num_query:,} x {num_gallery:,}, dim {query_features.shape[1]}", flush=True)
        (reranker, timings, (rank1, mean_ap)), seconds, peak, extra = measure(
            run_sparse, query_features, gallery_features, labels
        )
        rerank_seconds = timings["prepare_seconds"] + timings["distances_seconds"]
        row = {
            "num_query": num_query,
            "num_gallery": num_gallery,
            "seconds_with_ranking": seconds,
            "rerank_seconds": rerank_seconds,
            **timings,
            "peak_gib": peak,
            "extra_gib": extra,
            "held_mib": reranker.nbytes / 2**20,
            "rank1": rank1,
            "mAP": mean_ap,
            "dense_computed_gib": dense_gib,
        }
        row["plain_rank1"], row["plain_mAP"] = plain_scores(query_features, gallery_features, labels)
        print(
            f"  sparse re-ranker: {rerank_seconds:.1f} s ({timings['prepare_seconds']:.1f} s preparing, "
            f"{timings['distances_seconds']:.1f} s of distance chunks; {seconds:.1f} s with the streamed ranking), "
            f"process peak {peak:.2f} GiB (+{extra:.2f} GiB), holds {row['held_mib']:.0f} MiB; "
            f"rank-1 {rank1:.4f}, mAP {mean_ap:.4f} (plain euclidean: {row['plain_rank1']:.4f}, "
            f"{row['plain_mAP']:.4f})",
            flush=True,
        )
        if num_images <= DENSE_LIMIT:
            dense, dense_seconds, dense_peak, dense_extra = measure(
                dense_baseline, query_features, gallery_features, **RERANK_PARAMETERS
            )
            dense_rank1, dense_map = streamed_ranking(lambda start, stop, matrix=dense: matrix[start:stop], *labels)
            sparse_full = np.concatenate(
                [reranker.distances(s, min(s + 512, num_query)) for s in range(0, num_query, 512)]
            )
            difference = float(np.abs(sparse_full - dense).max())
            row.update(
                dense_seconds=dense_seconds,
                dense_peak_gib=dense_peak,
                dense_extra_gib=dense_extra,
                dense_rank1=dense_rank1,
                dense_mAP=dense_map,
                max_abs_difference=difference,
            )
            print(
                f"  dense baseline (distances only): {dense_seconds:.1f} s, process peak {dense_peak:.2f} GiB "
                f"(+{dense_extra:.2f} GiB; computed 20 N^2 = {dense_gib:.2f} GiB); rank-1 {dense_rank1:.4f}, "
                f"mAP {dense_map:.4f}; largest |difference| {difference:.1e}",
                flush=True,
            )
        else:
            print(f"  dense baseline not run: 20 (Q + G)^2 bytes = {dense_gib:,.1f} GiB (computed)", flush=True)
        report["cases"][name] = row
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
