"""A colour-histogram re-ID baseline: what a model must beat to show it learned identity.

Each image becomes concatenated HSV histograms of horizontal stripes (a common hand-crafted
re-ID descriptor: colours of head, torso and legs), L1-normalised per stripe, square-rooted
(Hellinger kernel) and L2-normalised, so euclidean distance compares histograms sensibly.
"""

import numpy as np
from PIL import Image

from siamese_reid.data.scan import upright


def colour_histogram_features(paths, image_size=(128, 64), bins=(8, 4, 4), stripes=6):
    """Returns float32 [len(paths), stripes * prod(bins)] descriptors."""
    features = []
    for path in paths:
        with Image.open(path) as image:
            hsv = np.asarray(upright(image).convert("RGB").resize(image_size[::-1]).convert("HSV"))
        parts = np.array_split(hsv, stripes, axis=0)
        histograms = []
        for part in parts:
            pixels = part.reshape(-1, 3)
            histogram, _ = np.histogramdd(pixels, bins=bins, range=((0, 256), (0, 256), (0, 256)))
            histograms.append(histogram.ravel() / max(pixels.shape[0], 1))
        descriptor = np.sqrt(np.concatenate(histograms))
        features.append(descriptor / max(np.linalg.norm(descriptor), 1e-12))
    return np.asarray(features, dtype=np.float32)
