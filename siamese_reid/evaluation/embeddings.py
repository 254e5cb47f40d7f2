"""Embedding extraction through tf.data, and the `.npz` embedding file format."""

import weakref
from pathlib import Path

import numpy as np
import tensorflow as tf

from siamese_reid.console import progress_bar
from siamese_reid.data.pipeline import inference_dataset
from siamese_reid.data.readers import Sample
from siamese_reid.errors import ReIDError
from siamese_reid.files import write_atomically


def extract_embeddings(model, paths, image_size, batch_size=64, flip_test=False, verbose=0, output_path=None):
    """Embeds images in batches; returns float32 [len(paths), embedding_dim].

    Each batch's embeddings go straight into the result as they are computed: an array in
    memory, or, with `output_path`, a `.npy` file on disk (written under a temporary name and
    renamed once complete, then returned memory-mapped read-only), so a gallery of millions
    is never held twice nor, with a file, in memory at all. `verbose` shows a progress bar.

    With `flip_test` each embedding is the mean of the image's and its mirror image's
    embeddings, re-normalised to unit length (the model's outputs are unit vectors). Each image
    is decoded once: a batch and its mirror image go through the model together.
    """
    if len(paths) == 0:
        raise ReIDError("no images to embed")
    dataset = inference_dataset(list(paths), image_size, batch_size)
    if flip_test:
        dataset = dataset.map(lambda images: tf.concat([images, images[:, :, ::-1, :]], axis=0))
    shape = (len(paths), int(model.output_shape[-1]))
    if output_path is None:
        return _embed_into(np.empty(shape, np.float32), model, dataset, flip_test, verbose)

    def write(temporary):
        output = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
        _embed_into(output, model, dataset, flip_test, verbose)
        output.flush()
        del output

    write_atomically(output_path, write, suffix=".npy")
    return np.load(output_path, mmap_mode="r")


# model -> its inference step, traced once per model (periodic evaluation calls it every time).
_INFERENCE_STEPS = weakref.WeakKeyDictionary()


def _inference_step(model):
    # A plain tf.function on the default device rather than model.predict_on_batch, which
    # under a tf.distribute strategy splits and re-joins the batch across replicas. It reaches
    # the model through a weak reference: a strong one in the cached value would keep every
    # model ever evaluated alive (the weak key could never go).
    if model not in _INFERENCE_STEPS:
        model_reference = weakref.ref(model)
        _INFERENCE_STEPS[model] = tf.function(
            lambda images: model_reference()(images, training=False), reduce_retracing=True
        )
    return _INFERENCE_STEPS[model]


def average_flips(embeddings):
    """Flip test: embeddings of [batch, mirrored batch] -> the normalised mean of each pair,
    float32 [batch, dim]."""
    half = len(embeddings) // 2
    summed = embeddings[:half] + embeddings[half:]
    return summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)


def embed_images(model, images, flip_test=False):
    """Embeddings of decoded images, float [n, height, width, 3] -> float32 [n, dim], through the
    model's compiled inference step (traced once per model: a few query images cost one call,
    not `model.predict`'s set-up), with the flip test when `flip_test`."""
    if flip_test:
        images = tf.concat([images, images[:, :, ::-1, :]], axis=0)
    embeddings = np.asarray(_inference_step(model)(images), dtype=np.float32)
    return average_flips(embeddings) if flip_test else embeddings


def _embed_into(output, model, dataset, flip_test, verbose):
    progress = progress_bar(len(output), "image") if verbose else None
    step = _inference_step(model)
    position = 0
    for images in dataset:  # with the flip test, the pipeline already appends the mirrored batch
        embeddings = np.asarray(step(images), dtype=np.float32)
        if flip_test:
            embeddings = average_flips(embeddings)
        output[position : position + len(embeddings)] = embeddings
        position += len(embeddings)
        if progress is not None:
            progress.update(position)
    return output


def embedding_input_size(model):
    """(height, width) the embedding model expects."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    if shape[1] is None or shape[2] is None:
        raise ReIDError("the model has no fixed input size; give data.image_height/width")
    return int(shape[1]), int(shape[2])


def save_embeddings(path, features, samples):
    """Writes features with identities, cameras and paths (no pickled objects), whole."""
    write_atomically(path, lambda temporary: _write_embeddings(temporary, features, samples))


def _write_embeddings(path, features, samples):
    with open(path, "wb") as handle:
        np.savez_compressed(
            handle,
            features=np.asarray(features, dtype=np.float32),
            pids=np.array([s.pid for s in samples], dtype=np.int64),
            camids=np.array([s.camid for s in samples], dtype=np.int64),
            paths=np.array([s.path for s in samples], dtype=str),
            sources=np.array([s.source or "" for s in samples], dtype=str),
        )


def load_embeddings(path):
    """Returns (features, samples) from a file written by `save_embeddings`."""
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"embedding file '{path}' does not exist")
    with np.load(path, allow_pickle=False) as data:
        samples = [
            Sample(str(p), int(pid), int(cam), str(source) or None)
            for p, pid, cam, source in zip(
                data["paths"],
                data["pids"],
                data["camids"],
                data["sources"] if "sources" in data.files else [""] * len(data["paths"]),
                strict=True,
            )
        ]
        return data["features"], samples
