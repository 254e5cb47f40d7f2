"""The Siamese model: one embedding tower run on anchor, positive and negative.

Weights are tied by construction: the same tower object is called for all three branches.
"""

import keras
from keras import ops


class SiameseModel(keras.Model):
    """Maps (anchor, positive, negative) image batches to embeddings [batch, 3, dim].

    Args:
      tower: the embedding model, shared by the three branches.
      branches: "batched" runs the tower once on the three batches concatenated (one large
        call, better use of the hardware); "separate" calls it three times, as in the keras.io
        Siamese example. Both give the same embeddings (up to BatchNorm batch statistics).
    """

    def __init__(self, tower, branches="batched", **kwargs):
        super().__init__(**kwargs)
        if branches not in ("batched", "separate"):
            raise ValueError(f"branches must be 'batched' or 'separate', got {branches!r}")
        self.tower = tower
        self.branches = branches

    def call(self, inputs, training=None):
        anchor, positive, negative = inputs
        if self.branches == "separate":
            embeddings = [self.tower(x, training=training) for x in (anchor, positive, negative)]
            return ops.stack(embeddings, axis=1)
        joined = self.tower(ops.concatenate([anchor, positive, negative], axis=0), training=training)
        return ops.stack(ops.split(joined, 3, axis=0), axis=1)
