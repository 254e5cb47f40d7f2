"""Ranking speed and memory, each case beside a baseline measured in the same run.

Cases (synthetic identities, cameras and clustered 128-d embeddings that look like a trained
model's):
  market     3,368 queries x 15,913 gallery (Market-1501's test set sizes):
             evaluate_ranking on the distance matrix against fast-reid's Cython evaluator
             (`--fastreid`, see build_fastreid_evaluator.py) and the common per-query loop
             with a full argsort; then evaluate_embeddings from the features
  msmt       11,659 x 82,161 (MSMT17 sizes): evaluate_embeddings
  market2m   3,368 x 2,000,000 (Market-1501 plus distractors): evaluate_embeddings
For the two large cases the baseline is the whole-matrix path (compute_distances, then
evaluate_ranking), whose memory is given as computed: running it would need that memory.

    python benchmarks/bench_ranking.py --fastreid benchmarks/results/fastreid   # all (~10 min)
    python benchmarks/bench_ranking.py --cases market

Memory is sampled every 5 ms from /proc/self/statm (Linux): "above features" is the rise of
resident memory during the measured call, with the features (and for market the matrix)
already in memory.
"""

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from siamese_reid.evaluation import compute_distances, evaluate_embeddings, evaluate_ranking

CASES = {
    "market": dict(num_query=3368, num_gallery=15913, num_ids=750, num_distractors=2798, num_cameras=6),
    "msmt": dict(num_query=11659, num_gallery=82161, num_ids=3060, num_distractors=0, num_cameras=15),
    "market2m": dict(
        num_query=3368, num_gallery=2_000_000, num_ids=750, num_distractors=2_000_000 - 13115, num_cameras=6
    ),
}


def make_case(num_query, num_gallery, num_ids, num_distractors, num_cameras, dim=128, seed=0):
    """Features, identities and cameras. Built block by block in float32, so a 2,000,000-image
    gallery costs its 1 GiB of features and no more."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids + 1, dim)).astype(np.float32)
    query_pids = rng.integers(1, num_ids + 1, num_query)
    gallery_pids = np.concatenate(
        [rng.integers(1, num_ids + 1, num_gallery - num_distractors), np.zeros(num_distractors, dtype=np.int64)]
    )
    query_camids = rng.integers(1, num_cameras + 1, num_query)
    gallery_camids = rng.integers(1, num_cameras + 1, num_gallery)

    def embed(pids):
        features = np.empty((len(pids), dim), np.float32)
        for start in range(0, len(pids), 65536):
            block = pids[start : start + 65536]
            noise = 1.2 * rng.standard_normal((len(block), dim), dtype=np.float32)
            distractor = rng.standard_normal((len(block), dim), dtype=np.float32)
            features[start : start + len(block)] = np.where(block[:, None] > 0, centers[block], distractor) + noise
        return features

    return embed(query_pids), embed(gallery_pids), query_pids, gallery_pids, query_camids, gallery_camids


def loop_baseline(distances, query_pids, gallery_pids, query_camids, gallery_camids, max_rank=50):
    """The common implementation (as in torchreid's and fast-reid's Python evaluators):
    argsort the whole matrix, then a per-query loop over the sorted gallery."""
    indices = np.argsort(distances, axis=1)
    matches = (gallery_pids[indices] == query_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q in range(len(query_pids)):
        order = indices[q]
        remove = ((gallery_pids[order] == query_pids[q]) & (gallery_camids[order] == query_camids[q])) | (
            gallery_pids[order] == -1
        )
        raw_cmc = matches[q][~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        all_ap.append((np.asarray(tmp_cmc) * raw_cmc).sum() / raw_cmc.sum())
    return np.asarray(all_cmc).astype(np.float32).mean(axis=0), float(np.mean(all_ap))


def fastreid_baseline(rank_cy):
    def evaluate(distances, query_pids, gallery_pids, query_camids, gallery_camids, max_rank=50):
        cmc, average_precisions, _ = rank_cy.evaluate_cy(
            distances, query_pids, gallery_pids, query_camids, gallery_camids, max_rank
        )
        return cmc, float(np.mean(average_precisions))

    return evaluate


class PeakResidentMemory:
    """Samples this process's resident memory every 5 ms; `peak_gib` is the rise above the
    level at entry. Unlike tracemalloc it adds no cost to each allocation, so timings of
    allocation-heavy Python code stay honest."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._resident()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _resident(self):
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self._resident())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._resident())
        self.peak_gib = (self.peak - self.start) / 2**30
        self.process_peak_gib = self.peak / 2**30


def measure(function, *args, **kwargs):
    with PeakResidentMemory() as memory:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        seconds = time.perf_counter() - started
    return result, {
        "seconds": seconds,
        "above_inputs_gib": memory.peak_gib,
        "process_peak_gib": memory.process_peak_gib,
    }


def _print(label, numbers, extra=""):
    print(
        f"  {label:<44} {numbers['seconds']:8.2f} s   +{numbers['above_inputs_gib']:.2f} GiB "
        f"(process {numbers['process_peak_gib']:.1f} GiB){extra}",
        flush=True,
    )


def run_market(case, rank_cy):
    query_features, gallery_features, *labels = case
    distances = compute_distances(query_features, gallery_features)
    row = {"matrix_gib": distances.nbytes / 2**30}
    result, row["evaluate_ranking"] = measure(evaluate_ranking, distances, *labels)
    _print("evaluate_ranking (matrix given)", row["evaluate_ranking"], f"  mAP {result.mean_ap:.4f}")
    baselines = {"per-query loop + full argsort": loop_baseline}
    if rank_cy is not None:
        baselines = {"fast-reid Cython evaluate_cy": fastreid_baseline(rank_cy), **baselines}
    for name, function in baselines.items():
        (cmc, mean_ap), numbers = measure(function, distances, *labels)
        # fast-reid accumulates AP in float32: equal to about 1e-6
        assert abs(cmc[0] - result.cmc[0]) < 1e-6 and abs(mean_ap - result.mean_ap) < 1e-5, (name, mean_ap)
        numbers["our_time_fraction"] = row["evaluate_ranking"]["seconds"] / numbers["seconds"]
        row[name] = numbers
        _print(name, numbers, f"  same metrics; ours takes {numbers['our_time_fraction']:.2f}x its time")
    del distances
    streamed, row["evaluate_embeddings"] = measure(evaluate_embeddings, *case)
    assert np.array_equal(streamed.query_average_precisions, result.query_average_precisions)
    _print("evaluate_embeddings (features given)", row["evaluate_embeddings"], "  identical result")
    return row


def run_large(case):
    query_features, gallery_features = case[:2]
    features_gib = (query_features.nbytes + gallery_features.nbytes) / 2**30
    matrix_gib = len(query_features) * len(gallery_features) * 4 / 2**30
    print(f"  features {features_gib:.2f} GiB; the whole float32 matrix would be {matrix_gib:.1f} GiB", flush=True)
    result, numbers = measure(evaluate_embeddings, *case)
    _print("evaluate_embeddings (features given)", numbers, f"  rank-1 {result.cmc[0]:.4f} mAP {result.mean_ap:.4f}")
    return {"features_gib": features_gib, "whole_matrix_gib_computed": matrix_gib, "evaluate_embeddings": numbers}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--fastreid", type=Path, help="folder holding fast-reid's compiled rank_cy module")
    parser.add_argument("--output", default="benchmarks/results/ranking.json")
    arguments = parser.parse_args()
    rank_cy = None
    if arguments.fastreid:
        sys.path.insert(0, str(arguments.fastreid))
        import rank_cy
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "cases": {}}
    for name in arguments.cases:
        started = time.perf_counter()
        case = make_case(**CASES[name])
        print(f"{name}: {len(case[0]):,} x {len(case[1]):,} (built in {time.perf_counter() - started:.0f} s)")
        report["cases"][name] = run_market(case, rank_cy) if name == "market" else run_large(case)
        del case
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
