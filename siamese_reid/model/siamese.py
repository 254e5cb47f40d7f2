"""The Siamese model: one embedding tower run on anchor, positive and negative.

Weights are tied by construction: the same tower object is called for all three branches. The
model is functional, so it is built (and its variables exist) as soon as it is constructed,
and it saves and loads like any Keras model.
"""

import keras
from keras import ops


def _batched(tower, anchor, positive, negative):
    # One large call on the three batches concatenated: better use of the hardware.
    joined = tower(ops.concatenate([anchor, positive, negative], axis=0))
    return ops.stack(ops.split(joined, 3, axis=0), axis=1)


def _separate(tower, anchor, positive, negative):
    # Three calls, as in the keras.io Siamese example.
    return ops.stack([tower(anchor), tower(positive), tower(negative)], axis=1)


# model.branches -> how the tower is run on the three inputs. Both give the same embeddings,
# up to BatchNorm's batch statistics in training.
BRANCHES = {"batched": _batched, "separate": _separate}


def build_siamese_model(tower, branches="batched"):
    """Maps (anchor, positive, negative) image batches to embeddings [batch, 3, embedding_dim].

    Args:
      tower: the embedding model, shared by the three branches.
      branches: a key of `BRANCHES`.
    """
    if branches not in BRANCHES:
        raise ValueError(f"branches must be one of {list(BRANCHES)}, got {branches!r}")
    image_shape = tower.input_shape[1:]
    inputs = [keras.Input(image_shape, name=name) for name in ("anchor", "positive", "negative")]
    embeddings = BRANCHES[branches](tower, *inputs)
    return keras.Model(inputs, embeddings, name=f"siamese_{branches}")
