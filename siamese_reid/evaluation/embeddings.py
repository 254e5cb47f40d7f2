"""Embedding extraction through tf.data, and the `.npz` embedding file format."""

from pathlib import Path

import numpy as np
import tensorflow as tf

from siamese_reid.data.pipeline import inference_dataset
from siamese_reid.data.records import Sample
from siamese_reid.errors import ReIDError
from siamese_reid.files import write_atomically


def extract_embeddings(model, paths, image_size, batch_size=64, flip_test=False, verbose=0):
    """Embeds images in batches; returns float32 [len(paths), embedding_dim].

    With `flip_test` each embedding is the mean of the image's and its mirror image's
    embeddings, re-normalised to unit length (the model's outputs are unit vectors). Each image
    is decoded once: a batch and its mirror image go through the model together.
    """
    if len(paths) == 0:
        raise ReIDError("no images to embed")
    dataset = inference_dataset(list(paths), image_size, batch_size)
    if not flip_test:
        return np.asarray(model.predict(dataset, verbose=verbose), dtype=np.float32)
    with_mirror = dataset.map(lambda images: tf.concat([images, images[:, :, ::-1, :]], axis=0))
    outputs = model.predict(with_mirror, verbose=verbose)
    # predict concatenates [batch, mirrored batch] per batch: undo that batch by batch.
    sizes = [min(batch_size, len(paths) - start) for start in range(0, len(paths), batch_size)]
    blocks = np.split(outputs, np.cumsum([2 * size for size in sizes])[:-1])
    embeddings = np.concatenate([block[: len(block) // 2] + block[len(block) // 2 :] for block in blocks])
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return embeddings.astype(np.float32)


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
