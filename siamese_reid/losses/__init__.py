"""Losses for re-ID training, in `keras.ops`: pure functions plus thin `keras.losses.Loss` classes.

- `distances`: the embedding distances the losses mine with;
- `triplet`: tensorflow-addons' triplet losses (batch-hard, semi-hard, batch-all, explicit
  triplets), re-implemented for Keras 3 (tensorflow-addons' `triplet.py`);
- `identity`: the strong baseline's identity losses (label-smoothed cross-entropy, center loss);
- `collapse`: the collapse indicators logged beside a triplet loss (tensorflow-addons'
  `metric_learning.py` holds its distances the same way).
"""

from siamese_reid.losses.collapse import make_triplet_metrics
from siamese_reid.losses.distances import DISTANCE_METRICS, pairwise_distances
from siamese_reid.losses.identity import (
    CenterLoss,
    LabelSmoothedCrossEntropy,
    center_distances,
    center_loss,
    center_update,
    label_smoothed_cross_entropy,
)
from siamese_reid.losses.triplet import (
    LOSSES,
    TripletBatchAllLoss,
    TripletHardLoss,
    TripletMarginLoss,
    TripletSemiHardLoss,
    build_loss,
    triplet_batch_all_loss,
    triplet_hard_loss,
    triplet_margin_loss,
    triplet_semihard_loss,
)

__all__ = [
    "CenterLoss",
    "DISTANCE_METRICS",
    "LOSSES",
    "LabelSmoothedCrossEntropy",
    "TripletBatchAllLoss",
    "TripletHardLoss",
    "TripletMarginLoss",
    "TripletSemiHardLoss",
    "build_loss",
    "center_distances",
    "center_loss",
    "center_update",
    "label_smoothed_cross_entropy",
    "make_triplet_metrics",
    "pairwise_distances",
    "triplet_batch_all_loss",
    "triplet_hard_loss",
    "triplet_margin_loss",
    "triplet_semihard_loss",
]
