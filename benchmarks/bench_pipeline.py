"""Input pipeline and train-step throughput, against the keras.io Siamese example's approach.

Measured in one run, at the shapes of config.yaml (override with --set):
  1. the tf.data P x K pipeline alone (decode + resize + augment), images/s;
  2. the P x K train step (model.fit on the tf.data pipeline), images/s;
  3. the triplet-mode train step, tower run as one batched call on anchor+positive+negative;
  4. the same with three separate tower calls;
  5. the baseline: three separate tower calls fed by a Python generator of triplets that
     decodes with PIL, as in the keras.io Siamese example;
  6. the P x K train step under each precision policy, with and without XLA;
  7. the shipped default exactly as train.py builds it (time_budget.time_a_copy, as a
     budgeted run times it: its loss, its training model, its batches, its precision) against the
     baseline at equal settings (float32, same images) and at each one's best settings (ours:
     the shipped config; the baseline: its faster precision policy).

    python benchmarks/bench_pipeline.py [--set data.image_height=128 ...] [--steps 20]
    python benchmarks/bench_pipeline.py --config configs/market1501_cpu.yaml --only-pipeline \
        --set data.train_dir=../shared/data/market1501-train/bounding_box_train ...   # 1. alone

--only-recipe measures the configured recipe's train step exactly as train.py builds it under
float32 and mixed_bfloat16, each without and with XLA, names the policy `training.precision:
auto` picks on this machine, and predicts each one's training time for the config's epochs over
the training split (periodic scoring not included). A recipe's time is a property of the CPU, not
only of the recipe: this says what it is on the machine at hand.
"""

import argparse
import dataclasses
import os
import platform
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from siamese_reid.config import load_config  # noqa: E402
from siamese_reid.console import show_messages  # noqa: E402
from siamese_reid.data import samplers  # noqa: E402
from siamese_reid.data.pipeline import pk_dataset, triplet_dataset  # noqa: E402
from siamese_reid.data.preparation import prepare_data  # noqa: E402
from siamese_reid.data.splits import contiguous_labels  # noqa: E402
from siamese_reid.files import create_folder, write_json  # noqa: E402
from siamese_reid.losses import build_loss  # noqa: E402
from siamese_reid.model import build_siamese_model  # noqa: E402
from siamese_reid.model.building import build_tower  # noqa: E402
from siamese_reid.precision import cpu_model  # noqa: E402
from siamese_reid.runs import create_evaluation_dir  # noqa: E402
from siamese_reid.time_budget import time_a_copy, time_train_steps  # noqa: E402


def images_per_second(dataset_or_generator, steps, images_per_step, consume):
    iterator = iter(dataset_or_generator)
    consume(next(iterator))  # warm-up: tracing, first decode
    started = time.perf_counter()
    for _ in range(steps):
        consume(next(iterator))
    return steps * images_per_step / (time.perf_counter() - started)


def fit_images_per_second(model, dataset, steps, images_per_step):
    """images/s from the median train-step time of `steps` steps of model.fit after two untimed
    ones (the library's `time_train_steps`, which a time-budgeted run uses too), and the
    interquartile range of the rate."""
    return rates(time_train_steps(model, dataset, steps), images_per_step)


def rates(step_time, images_per_step):
    """A `StepTime` as images/s: the median and the interquartile range."""
    fast, slow = step_time.quartiles
    return images_per_step / step_time.median, (images_per_step / slow, images_per_step / fast)


def python_triplet_generator(paths, triplets, batch_size, size):
    """keras.io-style: decode with PIL in Python, one triplet at a time."""

    def load(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size[1], size[0])), dtype=np.float32)

    while True:
        for start in range(0, len(triplets) - batch_size + 1, batch_size):
            block = triplets[start : start + batch_size]
            yield (
                tuple(np.stack([load(paths[i]) for i in block[:, column]]) for column in range(3)),
                np.zeros(batch_size),
            )


def baseline_images_per_second(config, paths, triplets, steps, policy):
    """The keras.io-style baseline under a precision policy: three tower calls, Python generator."""
    keras.mixed_precision.set_global_policy(policy)
    size, triplet_size = (config.data.image_height, config.data.image_width), config.training.triplet_batch_size
    model = build_siamese_model(build_tower(config), "separate")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=build_loss("triplet", 0.3, False, "L2"))
    signature = (
        tuple(tf.TensorSpec((triplet_size, *size, 3), tf.float32) for _ in range(3)),
        tf.TensorSpec((triplet_size,), tf.float64),
    )
    stream = tf.data.Dataset.from_generator(
        lambda: python_triplet_generator(paths, triplets, triplet_size, size), output_signature=signature
    )
    return fit_images_per_second(model, stream, steps, 3 * triplet_size)


def shipped_images_per_second(config, train, steps, precision_name):
    """The P x K train step exactly as experiment.train builds it, under a precision policy."""
    from siamese_reid.data.pipeline import images_per_batch
    from siamese_reid.precision import resolve_precision

    precision = resolve_precision(precision_name)
    keras.mixed_precision.set_global_policy(precision.policy)
    keras.utils.set_random_seed(config.training.seed)
    step_time, _ = time_a_copy(config, train, tf.distribute.get_strategy(), steps)
    rate, spread = rates(step_time, images_per_batch(config.training))
    return rate, spread, precision.policy


def shipped_default_against_baseline(config, train, paths, triplets, steps):
    """Images/s of the shipped default and of the baseline, at equal and at best settings."""
    results = {}
    ours_float32, spread, _ = shipped_images_per_second(config, train, steps, "float32")
    print(f"shipped default, float32: {ours_float32:.1f} images/s (interquartile {spread[0]:.1f}-{spread[1]:.1f})")
    ours_best, spread, policy = shipped_images_per_second(config, train, steps, config.training.precision)
    print(
        f"shipped default as configured ({config.training.precision} -> {policy}): {ours_best:.1f} images/s "
        f"(interquartile {spread[0]:.1f}-{spread[1]:.1f})"
    )
    baseline = {}
    for baseline_policy in ("float32", "mixed_bfloat16"):
        baseline[baseline_policy], spread = baseline_images_per_second(config, paths, triplets, steps, baseline_policy)
        print(
            f"baseline (generator + three tower calls), {baseline_policy}: {baseline[baseline_policy]:.1f} images/s "
            f"(interquartile {spread[0]:.1f}-{spread[1]:.1f})"
        )
    best_policy = max(baseline, key=baseline.get)
    results.update(
        shipped_float32_images_per_s=ours_float32,
        shipped_configured_images_per_s=ours_best,
        shipped_configured_policy=policy,
        baseline_float32_images_per_s=baseline["float32"],
        baseline_mixed_bfloat16_images_per_s=baseline["mixed_bfloat16"],
        baseline_best_policy=best_policy,
        speedup_equal_settings=ours_float32 / baseline["float32"],
        speedup_best_settings=ours_best / baseline[best_policy],
    )
    print(
        f"shipped default vs baseline: {results['speedup_equal_settings']:.2f}x at equal settings (float32), "
        f"{results['speedup_best_settings']:.2f}x at each one's best ({policy} vs {best_policy})",
        flush=True,
    )
    return results


def recipe_across_precisions(config, train, steps):
    """The configured recipe's train step under each policy, with and without XLA, and the
    training time each rate predicts for the config's epochs over `train`."""
    from siamese_reid.data.pipeline import images_per_batch, steps_per_epoch
    from siamese_reid.precision import resolve_precision

    images = config.training.epochs * steps_per_epoch(config.training, len(train)) * images_per_batch(config.training)
    auto = resolve_precision("auto")
    results = {"auto": auto.policy, "auto_reason": auto.reason, "training_images": images, "steps": steps}
    print(f"training.precision auto -> {auto.policy} ({auto.reason})", flush=True)
    for policy in ("float32", "mixed_bfloat16"):
        for xla in (False, True):
            variant = dataclasses.replace(config, training=dataclasses.replace(config.training, xla=xla))
            rate, spread, _ = shipped_images_per_second(variant, train, steps, policy)
            key = f"recipe_{policy}{'_xla' if xla else ''}"
            results[f"{key}_images_per_s"] = rate
            results[f"{key}_interquartile_images_per_s"] = list(spread)
            results[f"{key}_predicted_hours"] = images / rate / 3600
            print(
                f"recipe train step, {policy}{' + XLA' if xla else ''}: {rate:.1f} images/s "
                f"(interquartile {spread[0]:.1f}-{spread[1]:.1f}); {config.training.epochs} epochs of "
                f"{images // config.training.epochs:,} images: {images / rate / 3600:.1f} h",
                flush=True,
            )
    keras.mixed_precision.set_global_policy("float32")
    return results


def write_results(path, results):
    # the package's atomic writer: a run stopped mid-write leaves the previous results whole
    create_folder(Path(path).parent, exist_ok=True)
    write_json(path, results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default="benchmarks/results/pipeline.json")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--only-shipped", action="store_true", help="measure only the shipped default against the baseline (7.)"
    )
    only.add_argument("--only-pipeline", action="store_true", help="measure only the tf.data P x K pipeline alone (1.)")
    only.add_argument(
        "--only-recipe",
        action="store_true",
        help="measure only the configured recipe's train step under each precision, and its predicted training time",
    )
    arguments = parser.parse_args()
    # from_generator datasets have no known length: Keras warns when a warm-up pass ends them
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    show_messages()  # the dataset summary, as train.py shows it
    config = load_config(arguments.config, arguments.overrides)
    config, splits = prepare_data(config, create_evaluation_dir("benchmarks/results/pipeline"))
    size = (config.data.image_height, config.data.image_width)
    training, steps = config.training, arguments.steps
    paths, pids = [s.path for s in splits.train], np.array([s.pid for s in splits.train])
    camids = np.array([s.camid for s in splits.train])
    labels, _ = contiguous_labels(pids)
    pk_size = training.identities_per_batch * training.images_per_identity
    triplet_size = training.triplet_batch_size
    batches = samplers.pk_batches(pids, training.identities_per_batch, training.images_per_identity, steps + 3, 0)
    triplets = samplers.sample_triplets(pids, camids, (steps + 3) * triplet_size, 0)
    results = {
        "cpu": cpu_model(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "tensorflow": tf.__version__,
        "config": arguments.config,
        "overrides": arguments.overrides,
    }
    if arguments.only_recipe:
        results.update(recipe_across_precisions(config, splits.train, steps))
        write_results(arguments.output, results)
        return
    if arguments.only_shipped:
        results.update(shipped_default_against_baseline(config, splits.train, paths, triplets, steps))
        write_results(arguments.output, results)
        return

    pk = pk_dataset(paths, labels, batches, size, config.augment, 0)
    results["pipeline_pk_images_per_s"] = images_per_second(pk, steps, pk_size, lambda batch: batch[0].numpy())
    print(f"tf.data P x K pipeline alone: {results['pipeline_pk_images_per_s']:.0f} images/s", flush=True)
    if arguments.only_pipeline:
        write_results(arguments.output, results)
        return

    def compiled(model, loss_name):
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=build_loss(loss_name, 0.3, False, "L2"))
        return model

    keras.utils.set_random_seed(0)
    tower = build_tower(config)
    results["train_pk_images_per_s"], spread = fit_images_per_second(compiled(tower, "batch_hard"), pk, steps, pk_size)
    print(
        f"P x K train step (tf.data + fit): {results['train_pk_images_per_s']:.1f} images/s "
        f"(interquartile {spread[0]:.1f}-{spread[1]:.1f})",
        flush=True,
    )

    triplet_stream = triplet_dataset(paths, labels, triplets, triplet_size, size, config.augment, 0)
    for branches in ("batched", "separate"):
        model = compiled(build_siamese_model(build_tower(config), branches), "triplet")
        key = f"train_triplet_{branches}_images_per_s"
        results[key], spread = fit_images_per_second(model, triplet_stream, steps, 3 * triplet_size)
        print(
            f"triplet train step, {branches} branches (tf.data): {results[key]:.1f} images/s "
            f"(interquartile {spread[0]:.1f}-{spread[1]:.1f})",
            flush=True,
        )

    generator_model = compiled(build_siamese_model(build_tower(config), "separate"), "triplet")
    signature = (
        tuple(tf.TensorSpec((triplet_size, *size, 3), tf.float32) for _ in range(3)),
        tf.TensorSpec((triplet_size,), tf.float64),
    )
    # A fresh generator per iteration: tf.data finalises the one it was iterating when a fit ends.
    from_generator = tf.data.Dataset.from_generator(
        lambda: python_triplet_generator(paths, triplets, triplet_size, size), output_signature=signature
    )
    results["baseline_generator_alone_images_per_s"] = images_per_second(
        python_triplet_generator(paths, triplets, triplet_size, size), steps, 3 * triplet_size, lambda batch: None
    )
    print(
        f"baseline input alone (Python generator, PIL): {results['baseline_generator_alone_images_per_s']:.0f} "
        f"images/s",
        flush=True,
    )
    results["baseline_python_generator_separate_images_per_s"], spread = fit_images_per_second(
        generator_model, from_generator, steps, 3 * triplet_size
    )
    results["speedup_vs_baseline"] = (
        results["train_triplet_batched_images_per_s"] / results["baseline_python_generator_separate_images_per_s"]
    )
    print(
        f"baseline, Python generator + three tower calls: "
        f"{results['baseline_python_generator_separate_images_per_s']:.1f} images/s "
        f"(interquartile {spread[0]:.1f}-{spread[1]:.1f}) -> ours {results['speedup_vs_baseline']:.2f}x",
        flush=True,
    )
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        for xla in (False, True):
            keras.mixed_precision.set_global_policy(policy)
            model = build_tower(config)
            model.compile(
                optimizer=keras.optimizers.Adam(1e-4), loss=build_loss("batch_hard", 0.3, False, "L2"), jit_compile=xla
            )
            key = f"train_pk_{policy}{'_xla' if xla else ''}_images_per_s"
            results[key], spread = fit_images_per_second(model, pk, steps, pk_size)
            print(
                f"P x K train step, {policy}{' + XLA' if xla else ''}: {results[key]:.1f} images/s "
                f"(interquartile {spread[0]:.1f}-{spread[1]:.1f})",
                flush=True,
            )
    results.update(shipped_default_against_baseline(config, splits.train, paths, triplets, steps))
    keras.mixed_precision.set_global_policy("float32")
    results.update(
        image_size=list(size),
        backbone=config.model.backbone,
        vgg_blocks=config.model.vgg_blocks,
        pk_batch=pk_size,
        triplet_batch=triplet_size,
        steps=steps,
        tensorflow=tf.__version__,
        gpus=len(tf.config.list_physical_devices("GPU")),
    )
    write_results(arguments.output, results)


if __name__ == "__main__":
    main()
