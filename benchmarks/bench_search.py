"""Latency of one search: embed one query image and find its top-10 in a large gallery index.

The gallery holds synthetic unit-length embeddings (clustered, as real ones are); the model is
the shipped config's tower (random weights: speed does not depend on them). Measured with the
library's `Searcher`, the object `search.py query` uses, once the index is loaded: per query,
embedding (decode, tower with flip test) plus exact faiss search. Baseline in the same run:
the same exact search in numpy (one matrix-vector product and a partial sort).

    python benchmarks/bench_search.py [--gallery 1000000] [--queries 100]
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def synthetic_gallery(size, dim, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(size // 20, 1), dim)).astype(np.float32)
    features = centres[rng.integers(len(centres), size=size)] + 0.3 * rng.normal(size=(size, dim)).astype(np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def percentiles(seconds):
    milliseconds = 1000 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(milliseconds, 50)), "p95_ms": float(np.percentile(milliseconds, 95))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--output", default="benchmarks/results/search.json")
    arguments = parser.parse_args()

    import tensorflow as tf

    from siamese_reid.config import load_config, save_config
    from siamese_reid.model.building import build_tower
    from siamese_reid.runs import CONFIG, LAST_MODEL, THRESHOLD
    from siamese_reid.search import Searcher
    from siamese_reid.search import index as index_files

    config = load_config(arguments.config)
    tower = build_tower(config)
    dim = int(tower.output_shape[-1])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run_dir, index_dir = folder / "run", folder / "index"
        run_dir.mkdir()
        tower.save(run_dir / LAST_MODEL)
        save_config(config, run_dir / CONFIG)
        (run_dir / THRESHOLD).write_text(json.dumps({"value": 0.8}))
        index_dir.mkdir()
        header = index_files.new_header(
            {
                "path": str(run_dir / LAST_MODEL),
                "fingerprint": index_files.model_fingerprint(tower),
                "input_size": list(tower.input_shape[1:3]),
                "embedding_dim": dim,
            },
            {
                "dir": str(run_dir),
                "checkpoint": "last",
                "metric": "euclidean",
                "flip_test": config.evaluation.flip_test,
            },
            {},
        )
        features = synthetic_gallery(arguments.gallery, dim)
        entries = [index_files.ImageFile(f"/gallery/{i}.jpg", 0, 0, None, None) for i in range(len(features))]
        started = time.perf_counter()
        index_files.append_shard(index_dir, header, features, entries)
        write_seconds = time.perf_counter() - started
        del entries
        started = time.perf_counter()
        searcher = Searcher(index_dir)
        load_seconds = time.perf_counter() - started

        # query images: real-looking files of the model's input size
        height, width = tower.input_shape[1:3]
        rng = np.random.default_rng(1)
        paths = []
        for i in range(arguments.queries):
            path = folder / f"query_{i}.png"
            tf.io.write_file(str(path), tf.io.encode_png(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
            paths.append(str(path))
        searcher.search(paths[:3], top_k=10)  # warm-up: tracing
        total, embedding, faiss_search, numpy_search = [], [], [], []
        for path in paths:  # a stream of queries, as a service answers them
            started = time.perf_counter()
            searcher.search([path], top_k=10)
            total.append(time.perf_counter() - started)
        for path in paths:  # where the time goes, stage by stage
            started = time.perf_counter()
            query = searcher.embed([path])
            embedding.append(time.perf_counter() - started)
            started = time.perf_counter()
            searcher.nearest.search(query, 10)
            faiss_search.append(time.perf_counter() - started)
            started = time.perf_counter()
            squared = 2.0 - 2.0 * (features @ query[0])  # unit vectors: |g|^2 = |q|^2 = 1
            top = np.argpartition(squared, 10)[:10]
            top = top[np.argsort(squared[top])]
            numpy_search.append(time.perf_counter() - started)
    results = {
        "gallery": arguments.gallery,
        "embedding_dim": dim,
        "image_size": [int(height), int(width)],
        "flip_test": config.evaluation.flip_test,
        "queries": arguments.queries,
        "query_total": percentiles(total),
        "embedding_only": percentiles(embedding),
        "faiss_search_only": percentiles(faiss_search),
        "numpy_search_only_baseline": percentiles(numpy_search),
        "index_write_seconds": write_seconds,
        "index_load_seconds": load_seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.output).write_text(json.dumps(results, indent=2))
    for key in ("query_total", "embedding_only", "faiss_search_only", "numpy_search_only_baseline"):
        print(f"{key:<28} p50 {results[key]['p50_ms']:7.1f} ms   p95 {results[key]['p95_ms']:7.1f} ms")
    print(f"index of {arguments.gallery:,}: written in {write_seconds:.1f} s, loaded in {load_seconds:.1f} s")


if __name__ == "__main__":
    main()
