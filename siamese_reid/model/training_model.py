"""The model `fit` trains in P x K mode when the recipe needs more than the tower's embedding.

Luo et al.'s strong baseline trains three things the inference tower does not have: the
feature before the BNNeck (for the triplet loss), an identity classifier behind the BNNeck
(for the ID loss), and one centre per identity (for the center loss). This model is built on
the tower's own layers and tensors, so training it trains the tower; the classifier and the
centres exist only here. Checkpoints and exports save the tower alone, which holds neither.

    tower:    images -> backbone -> pool -> projection -> bnneck -> l2_normalize -> embedding
    training:                         projection ("pre_bnneck") -> triplet [, center]
                                                     bnneck -> classifier -> id logits
              [each stripe's pooled feature -> its own BN -> its own classifier -> stripe id logits]

Reference: Luo et al., Bag of Tricks and A Strong Baseline for Deep Person Re-identification,
https://arxiv.org/abs/1903.07071 (BNNeck: figure 5 and section 4.5). The per-stripe classifiers
follow Sun et al., Beyond Part Models (PCB), https://arxiv.org/abs/1711.09349.
"""

import keras
from keras import ops

from siamese_reid.errors import ReIDError
from siamese_reid.losses import build_loss, make_triplet_metrics
from siamese_reid.losses.identity import CenterLoss, LabelSmoothedCrossEntropy, center_distances, center_update


def _embedding(tower):
    return tower.output


def _pre_bnneck(tower):
    return tower.get_layer("projection").output


# loss.triplet_feature -> the tower tensor the triplet (and center) loss sees: the L2-normalised
# embedding (the TriNet recipe) or the projection before the BNNeck (the strong baseline).
TRIPLET_FEATURES = {"embedding": _embedding, "pre_bnneck": _pre_bnneck}


def classifier_input(tower):
    """The feature after the BNNeck (the projection without one), before L2 normalisation."""
    return tower.get_layer("l2_normalize").input


def _identity_classifier(num_identities, name):
    """A dense layer without bias initialised with standard deviation 0.001, as in the strong
    baseline's reference code; float32 logits under mixed precision (the softmax needs the range)."""
    return keras.layers.Dense(
        num_identities,
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        dtype="float32",
        name=name,
    )


def stripe_features(tower):
    """Each horizontal stripe's pooled feature [batch, channels], top to bottom: the inputs of the
    tower's "pool" concatenation (`pool_stripes`), which only a tower of 2 or more stripes has."""
    try:
        pool = tower.get_layer("pool")
    except ValueError:  # GeM pooling of one stripe makes no layer of that name
        pool = None
    if not isinstance(pool, keras.layers.Concatenate):
        raise ValueError("per-stripe identity losses need a tower of 2 or more stripes (model.stripes)")
    stripes = list(pool.input)
    rows = tower.get_layer("stripe_1").input.shape[1]
    if rows < len(stripes):
        # pool_stripes repeats rows then: several classifiers would learn the same rows
        raise ReIDError(
            f"per-stripe identity losses need a feature map of at least as many rows as stripes: the backbone "
            f"leaves {rows} rows for {len(stripes)} stripes; use fewer stripes (model.stripes) or taller images"
        )
    return stripes


def stripe_logits(tower, num_identities):
    """{"stripe_id_1": logits, ...}: each stripe's feature through its own batch normalisation
    (no learned shift, as the BNNeck) and its own classifier.

    PCB's point: a classifier per part makes every stripe identify the person on its own, where
    the one classifier behind the concatenation can lean on the stripes that are easiest (Sun et
    al., https://arxiv.org/abs/1711.09349). Where this differs from PCB:
    - the heads train beside the triplet loss and the global identity loss, and the embedding
      used for retrieval stays the projected, BNNeck-normalised concatenation (PCB concatenates
      the parts' own features), so the per-stripe losses shape the backbone, not the projection;
    - no reduction layer (PCB: a 1x1 convolution to 256-d with batch normalisation and ReLU)
      and no classifier bias: each head is a BN without shift and a bias-free classifier, as the
      BNNeck's; the loss is the label-smoothed cross-entropy of the global ID loss;
    - the stripes' losses are averaged (`compile_arguments`), PCB sums them;
    - the heads read the pooled stripes before any `model.feature_layer`;
    - PCB's own setting is 6 stripes at 384x128 with last stride 1; the stripes here are
      `model.stripes` of whatever map the backbone leaves.
    """
    logits = {}
    for index, features in enumerate(stripe_features(tower), start=1):
        normalised = keras.layers.BatchNormalization(center=False, momentum=0.9, name=f"stripe_bnneck_{index}")(
            features
        )
        logits[f"stripe_id_{index}"] = _identity_classifier(num_identities, f"stripe_classifier_{index}")(normalised)
    return logits


class IdentityCenters(keras.layers.Layer):
    """One centre per training identity; returns each feature's squared distance to its own.

    The centres are not trained by the model's optimizer: in training, each call moves them by
    one plain SGD step of `learning_rate` on the unweighted center loss (`center_update`), as the
    strong baseline's reference code does with its separate optimizer. They start from a
    standard normal draw, as there.

    Args:
      num_identities: N, the number of training identities (labels 0..N-1).
      learning_rate: the centres' SGD learning rate (0.5 in the reference code).

    Call arguments:
      features: float tensor of shape [batch, dim].
      labels: int tensor of shape [batch].

    Returns:
      float32 tensor of shape [batch].
    """

    def __init__(self, num_identities, learning_rate=0.5, **kwargs):
        kwargs.setdefault("dtype", "float32")  # whatever the precision policy: the distances feed a loss
        super().__init__(**kwargs)
        self.num_identities = num_identities
        self.learning_rate = learning_rate

    def build(self, features_shape, labels_shape):
        # "mean" aggregation: under a multi-replica strategy each replica assigns the centres it
        # computed from its share of the batch, and the replicas' values are averaged, which is
        # the step on the global batch when the shares are equal.
        self.centers = self.add_weight(
            shape=(self.num_identities, features_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=False,
            aggregation="mean",
            name="centers",
        )

    def call(self, features, labels, training=False):
        distances = center_distances(labels, features, self.centers)
        if training:
            # Program order: the loss above reads the centres before this step moves them.
            self.centers.assign(center_update(labels, ops.stop_gradient(features), self.centers, self.learning_rate))
        return distances

    def compute_output_shape(self, features_shape, labels_shape):
        return (features_shape[0],)

    def get_config(self):
        return {**super().get_config(), "num_identities": self.num_identities, "learning_rate": self.learning_rate}


def build_pk_training_model(
    tower, num_identities, triplet_feature="embedding", id_loss=True, center_loss=False, stripe_id_loss=False
):
    """The functional model `fit` trains around `tower` (shared layers, shared weights).

    Args:
      tower: the embedding tower (`build_embedding_model`).
      num_identities: training identities, labelled 0..N-1 (the classifier's and centres' size).
      triplet_feature: a key of `TRIPLET_FEATURES`, the feature the triplet loss sees.
      id_loss: whether to add the identity classifier ("id" output: logits [batch, N]), a dense
        layer without bias initialised with standard deviation 0.001, as in the reference code.
      center_loss: whether to add `IdentityCenters` on the triplet feature ("center" output:
        [batch]); the model then takes (images, labels) as inputs.
      stripe_id_loss: whether to add one classifier per stripe (`stripe_logits`: outputs
        "stripe_id_1" ... "stripe_id_S", logits [batch, N]); the tower needs 2 or more stripes.

    Returns:
      A `keras.Model` with dict outputs "triplet" [, "id"] [, "center"] [, "stripe_id_i"...];
      see `fit_batches` for what it is fed.
    """
    if triplet_feature not in TRIPLET_FEATURES:
        raise ValueError(f"triplet_feature must be one of {list(TRIPLET_FEATURES)}, got {triplet_feature!r}")
    inputs = tower.input
    outputs = {"triplet": TRIPLET_FEATURES[triplet_feature](tower)}
    if id_loss:
        outputs["id"] = _identity_classifier(num_identities, "classifier")(classifier_input(tower))
    if stripe_id_loss:
        outputs.update(stripe_logits(tower, num_identities))
    if center_loss:
        labels = keras.Input((), dtype="int32", name="labels")
        outputs["center"] = IdentityCenters(num_identities, name="identity_centers")(outputs["triplet"], labels)
        inputs = [tower.input, labels]
    return keras.Model(inputs, outputs, name="pk_training_model")


def fit_batches(dataset, model):
    """Maps P x K batches (images, labels) to what `model` takes in `fit`.

    The tower (a single output) takes them as they are; a `build_pk_training_model` model gets
    the labels as the target of every output, and as an input when it has identity centres.
    """
    if not isinstance(model.output, dict):
        return dataset
    names = list(model.output)
    takes_labels = len(model.inputs) == 2

    def to_inputs_and_targets(images, labels):
        return ((images, labels) if takes_labels else images), {name: labels for name in names}

    return dataset.map(to_inputs_and_targets)


def needs_training_model(loss):
    """Whether the `LossConfig` section needs `build_pk_training_model` rather than the tower:
    an ID loss (on the embedding or per stripe), a center loss, the feature before the BNNeck, or
    a weighted triplet loss."""
    extra_losses = loss.id_weight > 0 or loss.center_weight > 0 or loss.stripe_id_weight > 0
    return extra_losses or loss.triplet_feature != "embedding" or loss.triplet_weight != 1


def compile_arguments(loss, model):
    """The `loss`, `loss_weights` and `metrics` arguments of `model.compile` for the `LossConfig`
    section: one triplet loss for the tower (or the Siamese model), one loss per output for a
    `build_pk_training_model` model."""
    triplet_loss = build_loss(loss.name, loss.margin, loss.soft, loss.distance_metric)
    triplet_metrics = make_triplet_metrics(loss.distance_metric, loss.margin)
    if not isinstance(model.output, dict):
        return {"loss": triplet_loss, "metrics": triplet_metrics}
    losses, weights, metrics = {"triplet": triplet_loss}, {"triplet": loss.triplet_weight}, {"triplet": triplet_metrics}
    if "id" in model.output:
        losses["id"], weights["id"] = LabelSmoothedCrossEntropy(loss.label_smoothing), loss.id_weight
        metrics["id"] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if "center" in model.output:
        losses["center"], weights["center"] = CenterLoss(), loss.center_weight
    stripe_outputs = [name for name in model.output if name.startswith("stripe_id_")]
    for name in stripe_outputs:
        # The stripes' mean is what stripe_id_weight weighs, so the weight does not grow with the stripes.
        losses[name] = LabelSmoothedCrossEntropy(loss.label_smoothing)
        weights[name] = loss.stripe_id_weight / len(stripe_outputs)
    return {"loss": losses, "loss_weights": weights, "metrics": metrics}
