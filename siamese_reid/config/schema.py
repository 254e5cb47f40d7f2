"""The configuration's schema: every section and key, with its type, default and range, as
frozen dataclasses; and the names each choice key accepts.

Keys that name an implementation (a backbone, a loss, an optimizer, ...) are checked against
tuples of names kept here, so that loading a config is plain data and imports no TensorFlow;
`CHOICE_SOURCES` names the dict each tuple mirrors, and a test keeps them equal (a new
backbone is added to its dict and to its tuple here).
"""

import dataclasses

# The names each choice key accepts, beside the dict that implements the choice (in its order).
# They are written out here so that loading a config imports no TensorFlow; CHOICE_SOURCES and a
# test check that each tuple still lists its dict's keys, so the two cannot drift apart.
LAYOUTS = ("market", "folders", "msmt17", "cuhk03_np")  # siamese_reid.data.datasets.LAYOUTS
CUHK03_SUBSETS = ("detected", "labeled")  # siamese_reid.data.cuhk03.CUHK03_SUBSETS
MSMT17_VAL = ("unused", "train")  # siamese_reid.data.msmt17.MSMT17_VAL
BACKBONES = (  # siamese_reid.model.backbones.BACKBONES
    "vgg16",
    "vgg16_bn",
    "resnet50",
    "mobilenetv2",
    "osnet_x1_0",
    "osnet_x0_75",
    "osnet_x0_5",
    "osnet_x0_25",
    "osnet_ibn_x1_0",
    "osnet_ain_x1_0",
)
FEATURE_LAYERS = ("none", "torchreid")  # siamese_reid.model.pooling.FEATURE_LAYERS
POOLINGS = ("avg", "max", "gem")  # siamese_reid.model.pooling.POOLINGS
BRANCHES = ("batched", "separate")  # siamese_reid.model.siamese.BRANCHES
BATCH_LOSSES = ("batch_hard", "semihard", "batch_all")  # siamese_reid.losses.triplet.BATCH_LOSSES
LOSS_DISTANCE_METRICS = ("L2", "squared-L2", "angular")  # siamese_reid.losses.distances.DISTANCE_METRICS
TRIPLET_FEATURES = ("embedding", "pre_bnneck")  # siamese_reid.model.training_model.TRIPLET_FEATURES
ERASING_FILLS = ("random", "mean")  # siamese_reid.data.images.ERASING_FILLS
SAMPLERS = ("pk", "triplet")  # siamese_reid.data.pipeline.SAMPLERS
OPTIMIZERS = ("adam", "adamw", "sgd")  # siamese_reid.optimizers.OPTIMIZERS
SCHEDULES = ("cosine", "constant", "multistep")  # siamese_reid.optimizers.SCHEDULES
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")  # siamese_reid.precision.PRECISIONS
STRATEGIES = ("default", "mirrored", "multi_worker")  # siamese_reid.distribution.STRATEGIES
EVALUATION_METRICS = ("euclidean", "cosine")  # siamese_reid.evaluation.distances.METRICS
AP_DEFINITIONS = ("torchreid", "market_official")  # siamese_reid.evaluation.ranking.AP_DEFINITIONS

CHOICE_SOURCES = {
    "LAYOUTS": "siamese_reid.data.datasets:LAYOUTS",
    "CUHK03_SUBSETS": "siamese_reid.data.cuhk03:CUHK03_SUBSETS",
    "MSMT17_VAL": "siamese_reid.data.msmt17:MSMT17_VAL",
    "BACKBONES": "siamese_reid.model.backbones:BACKBONES",
    "FEATURE_LAYERS": "siamese_reid.model.pooling:FEATURE_LAYERS",
    "POOLINGS": "siamese_reid.model.pooling:POOLINGS",
    "BRANCHES": "siamese_reid.model.siamese:BRANCHES",
    "BATCH_LOSSES": "siamese_reid.losses.triplet:BATCH_LOSSES",
    "LOSS_DISTANCE_METRICS": "siamese_reid.losses.distances:DISTANCE_METRICS",
    "TRIPLET_FEATURES": "siamese_reid.model.training_model:TRIPLET_FEATURES",
    "ERASING_FILLS": "siamese_reid.data.images:ERASING_FILLS",
    "SAMPLERS": "siamese_reid.data.pipeline:SAMPLERS",
    "OPTIMIZERS": "siamese_reid.optimizers:OPTIMIZERS",
    "SCHEDULES": "siamese_reid.optimizers:SCHEDULES",
    "PRECISIONS": "siamese_reid.precision:PRECISIONS",
    "STRATEGIES": "siamese_reid.distribution:STRATEGIES",
    "EVALUATION_METRICS": "siamese_reid.evaluation.distances:METRICS",
    "AP_DEFINITIONS": "siamese_reid.evaluation.ranking:AP_DEFINITIONS",
}


def _field(default, *, choices=None, minimum=None, maximum=None):
    """A dataclass field carrying its validation rule in metadata; `choices` is a tuple of the
    valid names."""
    metadata = {"choices": choices, "minimum": minimum, "maximum": maximum}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class ExtraTrainingSet:
    """One entry of data.extra_train: a dataset whose training split joins the main one's."""

    root: str = _field(dataclasses.MISSING)
    layout: str = _field("market", choices=LAYOUTS)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    root: str | None = _field(None)
    train_dir: str | None = _field(None)
    query_dir: str | None = _field(None)
    gallery_dir: str | None = _field(None)
    layout: str = _field("market", choices=LAYOUTS)
    cuhk03_subset: str = _field("detected", choices=CUHK03_SUBSETS)
    msmt17_val: str = _field("unused", choices=MSMT17_VAL)
    extra_train: tuple[ExtraTrainingSet, ...] = _field(())
    test_fraction: float = _field(0.5, minimum=0.05, maximum=0.95)
    # keras.applications backbones need at least 32x32 inputs.
    image_height: int = _field(96, minimum=32, maximum=1024)
    image_width: int = _field(48, minimum=32, maximum=1024)
    split_seed: int = _field(0, minimum=0, maximum=2**32 - 1)
    # Fraction of the training identities held out as a validation query/gallery split
    # (0 = none): periodic evaluation and best.keras then use it instead of the test split.
    validation_fraction: float = _field(0.0, minimum=0.0, maximum=0.5)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    dir: str = _field("data/demo")
    seed: int = _field(0, minimum=0, maximum=2**32 - 1)
    num_train_identities: int = _field(60, minimum=2)
    num_test_identities: int = _field(40, minimum=2)
    num_cameras: int = _field(4, minimum=2, maximum=9)
    images_per_camera: int = _field(2, minimum=1)
    num_distractors: int = _field(40, minimum=0)
    num_junk: int = _field(10, minimum=0)
    image_height: int = _field(128, minimum=32, maximum=1024)
    image_width: int = _field(64, minimum=16, maximum=1024)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = _field("vgg16", choices=BACKBONES)
    weights: str = _field("none")
    vgg_blocks: int = _field(3, minimum=1, maximum=5)
    last_stride: int = _field(2, minimum=1, maximum=2)
    freeze_blocks: int = _field(0, minimum=0, maximum=5)
    pooling: str = _field("avg", choices=POOLINGS)
    stripes: int = _field(4, minimum=1, maximum=64)
    feature_layer: str = _field("none", choices=FEATURE_LAYERS)
    embedding_dim: int = _field(128, minimum=0)
    bnneck: bool = _field(True)
    branches: str = _field("batched", choices=BRANCHES)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    name: str = _field("batch_hard", choices=BATCH_LOSSES)
    margin: float = _field(0.3, minimum=0.0)
    soft: bool = _field(False)
    distance_metric: str = _field("L2", choices=LOSS_DISTANCE_METRICS)
    triplet_weight: float = _field(1.0, minimum=0.0)
    triplet_feature: str = _field("embedding", choices=TRIPLET_FEATURES)
    id_weight: float = _field(0.0, minimum=0.0)
    label_smoothing: float = _field(0.1, minimum=0.0, maximum=1.0)
    center_weight: float = _field(0.0, minimum=0.0)
    center_learning_rate: float = _field(0.5, minimum=0.0)
    # Weight of the identity losses on each stripe's own classifier (PCB); their mean is weighted.
    stripe_id_weight: float = _field(0.0, minimum=0.0)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    flip: bool = _field(True)
    pad_crop: bool = _field(True)
    pad: int = _field(4, minimum=0)
    random_erasing: bool = _field(False)
    erasing_probability: float = _field(0.5, minimum=0.0, maximum=1.0)
    erasing_fill: str = _field("random", choices=ERASING_FILLS)
    color_jitter: bool = _field(True)
    jitter_strength: float = _field(0.2, minimum=0.0, maximum=1.0)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    sampler: str = _field("pk", choices=SAMPLERS)
    identities_per_batch: int = _field(8, minimum=2)
    images_per_identity: int = _field(4, minimum=2)
    triplet_batch_size: int = _field(16, minimum=1)
    steps_per_epoch: int = _field(0, minimum=0)
    epochs: int = _field(150, minimum=1)
    # Hours of this machine a new run's training may take (0 = no budget): the run times its train
    # step first and trains min(epochs, what fits) epochs (siamese_reid.time_budget).
    time_budget_hours: float = _field(0.0, minimum=0.0)
    optimizer: str = _field("adam", choices=OPTIMIZERS)
    learning_rate: float = _field(3.0e-4, minimum=0.0)
    weight_decay: float = _field(0.0, minimum=0.0)
    warmup_epochs: int = _field(2, minimum=0)
    schedule: str = _field("cosine", choices=SCHEDULES)
    # Epochs after which the multistep schedule multiplies the rate by lr_gamma.
    lr_milestones: tuple[int, ...] = _field((40, 70), minimum=1)
    lr_gamma: float = _field(0.1, minimum=0.0, maximum=1.0)
    seed: int = _field(0, minimum=0, maximum=2**32 - 1)
    precision: str = _field("auto", choices=PRECISIONS)
    xla: bool = _field(False)
    strategy: str = _field("default", choices=STRATEGIES)
    # Logical CPU devices for the mirrored strategy (0 = use the GPUs, or the one CPU).
    cpu_replicas: int = _field(0, minimum=0, maximum=256)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    every_n_epochs: int = _field(10, minimum=0)
    batch_size: int = _field(64, minimum=1)
    metric: str = _field("euclidean", choices=EVALUATION_METRICS)
    flip_test: bool = _field(True)
    rerank: bool = _field(False)
    ap_definition: str = _field("torchreid", choices=AP_DEFINITIONS)
    max_rank: int = _field(50, minimum=1)
    num_examples: int = _field(6, minimum=0)
    target_far: float = _field(0.01, minimum=0.0, maximum=1.0)
    score_test: bool = _field(True)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    dir: str = _field("runs")
    run_name: str | None = _field(None)


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    demo: DemoConfig = DemoConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
