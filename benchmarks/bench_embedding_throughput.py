"""Embedding throughput (images/s) of the OSNet towers against the shipped VGG16 tower.

For each tower (the four OSNet widths with the shipped head, and config.yaml's model section as
it is: the shipped VGG16 tower), each input size (256x128, the field's usual one, and the shipped
96x48) and each precision (float32, mixed_bfloat16), the tower is built by the library
(`model.building.build_tower`) and run on batches of 64 random images in [0, 255] by one traced
inference step, as evaluation runs it. Image decoding is not included: this is the model's speed.
The median over the timed batches is reported, with the interquartile range: a shared machine's
speed varies from second to second.

    python benchmarks/bench_embedding_throughput.py                  # the full measurement
    python benchmarks/bench_embedding_throughput.py --batches 2 --models osnet_x0_25 --sizes 96x48
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from siamese_reid.config import load_config  # noqa: E402
from siamese_reid.model.building import build_tower  # noqa: E402
from siamese_reid.model.osnet import OSNET_VARIANTS  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = "shipped"  # config.yaml's model section unchanged (VGG16, 3 blocks, 4 stripes)
OSNET_WIDTHS = [name for name in OSNET_VARIANTS if "ibn" not in name and "ain" not in name]
SIZES = ("256x128", "96x48")
PRECISIONS = ("float32", "mixed_bfloat16")


def tower_config(config_path, model_name, size):
    height, width = size.split("x")
    overrides = [f"data.image_height={height}", f"data.image_width={width}"]
    if model_name != SHIPPED:
        overrides.append(f"model.backbone={model_name}")
    return load_config(config_path, overrides)


def images_per_second(tower, batch_size, num_batches, seed=0):
    """Median and interquartile range of images/s over `num_batches` timed calls, after two
    untimed ones (tracing, first allocation)."""
    _, height, width, _ = tower.input_shape
    images = tf.constant(np.random.default_rng(seed).uniform(0, 255, (batch_size, height, width, 3)), tf.float32)
    step = tf.function(lambda batch: tower(batch, training=False))
    for _ in range(2):
        step(images).numpy()
    durations = []
    for _ in range(num_batches):
        started = time.perf_counter()
        step(images).numpy()  # .numpy() waits for the result
        durations.append(time.perf_counter() - started)
    rates = batch_size / np.array(durations)
    return {
        "images_per_second": float(np.median(rates)),
        "interquartile_range": [float(np.percentile(rates, 25)), float(np.percentile(rates, 75))],
    }


def measure(config_path, model_name, size, precision, batch_size, num_batches):
    keras.mixed_precision.set_global_policy(precision)
    try:
        config = tower_config(config_path, model_name, size)
        keras.utils.set_random_seed(0)
        tower = build_tower(config)
        result = images_per_second(tower, batch_size, num_batches)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    trainable = int(sum(np.prod(weight.shape) for weight in tower.trainable_weights))
    return {
        "model": model_name,
        "backbone": config.model.backbone,
        "trainable_parameters": trainable,
        "size": size,
        "precision": precision,
        "batch_size": batch_size,
        **result,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(PROJECT_ROOT / "config.yaml"))
    parser.add_argument("--models", nargs="+", default=[*OSNET_WIDTHS, SHIPPED])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--output", default=str(PROJECT_ROOT / "benchmarks" / "results" / "embedding_throughput.json"))
    arguments = parser.parse_args()
    results = []
    for model_name in arguments.models:
        for size in arguments.sizes:
            for precision in arguments.precisions:
                result = measure(arguments.config, model_name, size, precision, arguments.batch_size, arguments.batches)
                low, high = result["interquartile_range"]
                print(
                    f"{model_name:>12} {result['backbone']:>12} {size:>8} {precision:>15}: "
                    f"{result['images_per_second']:8.1f} images/s (IQR {low:.1f}-{high:.1f})",
                    flush=True,
                )
                results.append(result)
    output = Path(arguments.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__}
    output.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
