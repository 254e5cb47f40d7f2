"""Training on several devices or machines through `tf.distribute`, and what it asks of a run.

`training.strategy` picks the strategy: "default" (one device), "mirrored" (every local GPU, or
`training.cpu_replicas` logical CPU devices) or "multi_worker" (`MultiWorkerMirroredStrategy`,
the cluster from TF_CONFIG). Each replica gets an equal, consecutive share of every P x K batch;
the losses gather the embeddings of all replicas before mining (see `siamese_reid.losses`), and
BatchNormalization computes its statistics over the global batch, so a step on N replicas is the
step one device takes on the whole batch.

Under multi-worker training one process, the chief, owns the run folder: it writes every file,
checkpoint and report and scores the model; the other workers train beside it and write only
into a temporary folder of their own, removed when they finish.

Reference: fast-reid gathers the embeddings of every GPU before mining
(https://github.com/JDAI-CV/fast-reid, `fastreid/modeling/losses/triplet_loss.py`); per-replica
mining is tensorflow/tensorflow#47344.
"""

import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from siamese_reid.errors import ReIDError
from siamese_reid.runs import BACKUP


def configure_cpu_replicas(count):
    """Splits the CPU into `count` logical devices, which the mirrored strategy then uses.

    TensorFlow fixes its devices when it starts executing: this must run before any other
    TensorFlow work in the process. Running it again with the same count is harmless.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise ReIDError(
                f"training.cpu_replicas={count} could not be applied: TensorFlow had already started in this "
                "process. Set it in the config or on the command line of a new process (in a notebook, restart "
                "the kernel and train before running anything else)"
            ) from None


def _default(cpu_replicas):
    return tf.distribute.get_strategy()


def _mirrored(cpu_replicas):
    # The CPU's logical devices when asked for, else every GPU, else every logical CPU device
    # (one, unless the process split the CPU itself).
    if cpu_replicas:
        configure_cpu_replicas(cpu_replicas)
    gpus = [] if cpu_replicas else tf.config.list_logical_devices("GPU")
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose `reduce` accepts what Keras' `fit` passes it.

    Keras 3's TensorFlow trainer (3.15, unchanged in 3.16) calls `strategy.reduce` on the
    first batch's whole (images, labels) structure, only to learn its shapes, and on every
    scalar metric with axis=0. `MirroredStrategy` accepts both; the collective strategy accepts
    neither, so `fit` dies before its first step ("Attempt to convert a value (PerReplica...)",
    keras-team/keras#20585; "Invalid reduction dimension 0", tensorflow/tensorflow#72388). Here
    each element of a structure is reduced on its own, and a scalar across replicas, as
    `MirroredStrategy` does; every other call is the parent's.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super().reduce

        def reduce_one(element):
            local = self.experimental_local_results(element)[0]
            return parent(reduce_op, element, None if local.shape.rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)


def _multi_worker(cpu_replicas):
    return _MultiWorkerMirroredStrategy()


# training.strategy -> builder(training.cpu_replicas)
STRATEGIES = {"default": _default, "mirrored": _mirrored, "multi_worker": _multi_worker}


@functools.cache
def make_strategy(name, cpu_replicas=0):
    """The tf.distribute strategy for `name`, a key of `STRATEGIES`; one per process.

    Created once and reused: a multi-worker strategy joins its cluster when created (every
    worker must create it before its first collective), and the devices it runs on are fixed
    for the life of the process anyway.
    """
    if name not in STRATEGIES:
        raise ReIDError(f"unknown strategy {name!r}; valid names: {list(STRATEGIES)}")
    if cpu_replicas and name != "mirrored":
        raise ReIDError(
            f"training.cpu_replicas splits the CPU for the mirrored strategy only: set training.strategy=mirrored "
            f"(it is {name!r}) or training.cpu_replicas=0"
        )
    return STRATEGIES[name](cpu_replicas)


def check_batch_split(training, num_replicas):
    """Fails unless every replica gets an equal share of each batch: whole identities
    (P divisible by the replicas) for P x K batches, whole triplets otherwise."""
    if training.sampler == "pk":
        count, key = training.identities_per_batch, "training.identities_per_batch"
    else:
        count, key = training.triplet_batch_size, "training.triplet_batch_size"
    if count % num_replicas:
        raise ReIDError(
            f"{key} ({count}) must be divisible by the {num_replicas} replicas training in sync, so that each "
            f"replica gets an equal share of every batch: use a multiple of {num_replicas}"
        )


def start_distribution(training):
    """The run's strategy for the training section, once each replica is known to get an equal
    share of every batch. Created once per process, before TensorFlow does anything else: it
    fixes the devices TensorFlow starts with and, for multi-worker training, joins the cluster."""
    strategy = make_strategy(training.strategy, training.cpu_replicas)
    check_batch_split(training, strategy.num_replicas_in_sync)
    return strategy


def split_by_data(dataset):
    """`dataset` with each global batch split between workers by position.

    Every worker builds the same seeded stream and keeps its own share of each batch, so the
    workers together see exactly the batches one device would (the default would look for
    input files to split, find none and say so).
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# ---------------------------------------------------------------------------------------------
# BatchNormalization over the global batch


def _batch_norm_layers(model):
    from siamese_reid.model.float32 import all_layers

    return [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def synchronize_batch_norm(model):
    """Makes every BatchNormalization layer of `model`, the backbone's included, normalise
    with the mean and variance of the global batch (all replicas) while training.

    Keras' `synchronized` option, set on the built layers: it is read when a training step is
    traced, and all-reduces the statistics across replicas (NCCL on GPUs); inference uses the
    moving statistics and is unchanged.
    """
    for layer in _batch_norm_layers(model):
        layer.synchronized = True


@contextlib.contextmanager
def batch_norm_unsynchronized(model):
    """Within the block, `model`'s BatchNormalization layers are saved as plain ones.

    Synchronisation is a training setting of this process: a saved tower is the same file
    whatever the number of replicas, and loads with any Keras backend (`synchronized=True` is
    refused outside TensorFlow).
    """
    layers = [layer for layer in _batch_norm_layers(model) if layer.synchronized]
    for layer in layers:
        layer.synchronized = False
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronized = True


# ---------------------------------------------------------------------------------------------
# Workers


def _cluster(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver, (resolver.cluster_spec().as_dict() if resolver is not None else {})


def is_multi_worker(strategy):
    _, cluster = _cluster(strategy)
    return sum(len(tasks) for tasks in cluster.values()) > 1


def is_chief(strategy):
    """Whether this process writes the run's files: the "chief" task, else worker 0, else the
    only process (the rule of the Keras multi-worker guide)."""
    resolver, cluster = _cluster(strategy)
    if not is_multi_worker(strategy) or resolver.task_type in (None, "chief"):
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def worker_name(strategy):
    resolver, _ = _cluster(strategy)
    return f"{resolver.task_type} {resolver.task_id}"


# Longest text `broadcast_from_chief` carries (PATH_MAX on Linux).
_MAX_TEXT_BYTES = 4096


def broadcast_from_chief(strategy, text):
    """The chief's `text` on every worker (the others pass None); `text` itself when there is
    a single worker. Every worker must call it at the same point: it is a collective.

    An empty string from the chief tells the others it failed.
    """
    if not is_multi_worker(strategy):
        return text
    codes = np.zeros(_MAX_TEXT_BYTES, np.int32)
    if is_chief(strategy):
        encoded = np.frombuffer(text.encode(), np.uint8)
        if len(encoded) > _MAX_TEXT_BYTES:
            raise ReIDError(f"'{text}' is longer than {_MAX_TEXT_BYTES} bytes")
        codes[: len(encoded)] = encoded
    # A sum over replicas in which only the chief's are non-zero; the chief has as many
    # replicas as each worker has devices.
    values = strategy.experimental_distribute_values_from_function(lambda context: tf.constant(codes))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy()
    codes = total // len(strategy.extended.worker_devices)
    return bytes(codes[codes > 0].astype(np.uint8)).decode()


def folder_made_by_chief(strategy, create_folder):
    """The folder `create_folder()` makes on the chief, as a Path on every worker, so that all
    of them name the same run (they write nothing into it: see `worker_output_dir`). A single
    process just calls it. Every worker must call this at the same point: it is a collective.
    """
    if not is_multi_worker(strategy):
        return create_folder()
    folder, failure = "", None
    if is_chief(strategy):
        try:
            folder = str(create_folder())
        except ReIDError as error:
            failure = error  # raised once the other workers know, so that none waits for a folder
    agreed = broadcast_from_chief(strategy, folder)
    if failure is not None:
        raise failure
    if not agreed:
        raise ReIDError("the chief could not create the run folder (its error says why)")
    return Path(agreed)


@contextlib.contextmanager
def worker_output_dir(run_dir, strategy, resuming):
    """Where this process writes: `run_dir` on the chief; on another worker, a temporary
    folder removed on exit (with a copy of the run's backup when resuming, so that every
    worker restores the same weights and epoch: the run folder must then be on a filesystem
    all workers can read)."""
    if is_chief(strategy):
        yield Path(run_dir)
        return
    scratch = Path(tempfile.mkdtemp(prefix="siamese-reid-worker-"))
    try:
        backup = Path(run_dir) / BACKUP
        if resuming:
            if not backup.is_dir():
                raise ReIDError(
                    f"{worker_name(strategy)} cannot read '{backup}': resuming a multi-worker run needs its run "
                    "folder on a filesystem every worker can read"
                )
            shutil.copytree(backup, scratch / BACKUP)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
