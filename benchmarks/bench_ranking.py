"""Ranking speed and memory: evaluate_ranking vs the common per-query loop with a full argsort.

Cases (synthetic identities and cameras, distances from clustered 128-d embeddings):
  market      3,368 queries x 15,913 gallery (Market-1501 test set sizes), with the baseline
  msmt        11,659 x 82,161 (MSMT17 sizes)
  market500k  Market-1501 + 500,000 distractors (3,368 x 515,913; a 6.9 GB float32 matrix)

    python benchmarks/bench_ranking.py                  # all three (about 10 minutes, ~16 GB)
    python benchmarks/bench_ranking.py --cases market   # just the comparison with the baseline

Memory is sampled every 5 ms from /proc/self/statm (Linux): "extra" is the rise of resident
memory during the ranking step, "process peak" the whole process at its peak during that step
(distance matrix included).
"""

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from siamese_reid.evaluation.distances import compute_distances  # noqa: E402
from siamese_reid.evaluation.ranking import evaluate_ranking  # noqa: E402

CASES = {
    "market": dict(num_query=3368, num_gallery=15913, num_ids=750, num_distractors=2798, num_cameras=6),
    "msmt": dict(num_query=11659, num_gallery=82161, num_ids=3060, num_distractors=0, num_cameras=15),
    "market500k": dict(
        num_query=3368, num_gallery=15913 + 500000, num_ids=750, num_distractors=2798 + 500000, num_cameras=6
    ),
}


def make_case(num_query, num_gallery, num_ids, num_distractors, num_cameras, dim=128, seed=0):
    """Query/gallery identities, cameras and embedding distances that look like a trained model's."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids + 1, dim)).astype(np.float32)
    query_pids = rng.integers(1, num_ids + 1, num_query)
    gallery_pids = np.concatenate(
        [rng.integers(1, num_ids + 1, num_gallery - num_distractors), np.zeros(num_distractors, dtype=np.int64)]
    )
    query_camids = rng.integers(1, num_cameras + 1, num_query)
    gallery_camids = rng.integers(1, num_cameras + 1, num_gallery)

    def embed(pids):
        noise = rng.normal(scale=1.2, size=(len(pids), dim)).astype(np.float32)
        features = np.where(pids[:, None] > 0, centers[pids], rng.normal(size=(len(pids), dim)).astype(np.float32))
        return features + noise

    distances = compute_distances(embed(query_pids), embed(gallery_pids), "euclidean")
    return distances, query_pids, gallery_pids, query_camids, gallery_camids


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
    return result, seconds, memory.peak_gib, memory.process_peak_gib


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--output", default="benchmarks/results/ranking.json")
    arguments = parser.parse_args()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "cases": {}}
    for name in arguments.cases:
        sizes = CASES[name]
        started = time.perf_counter()
        case = make_case(**sizes)
        build = time.perf_counter() - started
        matrix_gb = case[0].nbytes / 2**30
        print(
            f"{name}: {case[0].shape[0]:,} x {case[0].shape[1]:,} float32 "
            f"({matrix_gb:.1f} GiB, built in {build:.0f} s)",
            flush=True,
        )
        result, seconds, peak, process_peak = measure(evaluate_ranking, *case)
        row = {
            "shape": list(case[0].shape),
            "matrix_gib": matrix_gb,
            "seconds": seconds,
            "peak_extra_gib": peak,
            "process_peak_gib": process_peak,
            "rank1": float(result.cmc[0]),
            "mAP": result.mean_ap,
        }
        print(
            f"  evaluate_ranking: {seconds:.1f} s, peak extra memory {peak:.2f} GiB, process peak "
            f"{process_peak:.1f} GiB (rank-1 {result.cmc[0]:.4f}, mAP {result.mean_ap:.4f})",
            flush=True,
        )
        if name == "market":
            (cmc, mean_ap), loop_seconds, loop_peak, loop_process_peak = measure(loop_baseline, *case)
            assert abs(cmc[0] - result.cmc[0]) < 1e-6 and abs(mean_ap - result.mean_ap) < 1e-9
            row.update(
                baseline_seconds=loop_seconds,
                baseline_peak_extra_gib=loop_peak,
                baseline_process_peak_gib=loop_process_peak,
                speedup=loop_seconds / seconds,
            )
            print(
                f"  per-query loop + full argsort: {loop_seconds:.1f} s, peak extra memory {loop_peak:.2f} GiB, "
                f"process peak {loop_process_peak:.1f} GiB "
                f"-> {loop_seconds / seconds:.1f}x faster, same metrics",
                flush=True,
            )
        report["cases"][name] = row
        del case
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
