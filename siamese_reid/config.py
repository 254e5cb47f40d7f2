"""Typed, frozen configuration loaded from `config.yaml` plus `--set section.key=value` overrides.

Only the entry points and `siamese_reid.experiment` see the whole `Config`; library code
receives one section or plain arguments. Every key is declared here once, with its type and
range, so a typo or an out-of-range value fails before any work starts, naming the key and the
closest valid one.

Keys that name an implementation (a backbone, a loss, an optimizer, ...) are checked against
tuples of names kept here, so that loading a config is plain data and imports no TensorFlow;
`CHOICE_SOURCES` names the dict each tuple mirrors, and a test keeps them equal (a new
backbone is added to its dict and to its tuple here).
"""

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Hashable
from pathlib import Path

import yaml

from siamese_reid.errors import ReIDError

# The names each choice key accepts, beside the dict that implements the choice (in its order).
# They are written out here so that loading a config imports no TensorFlow; CHOICE_SOURCES and a
# test check that each tuple still lists its dict's keys, so the two cannot drift apart.
LAYOUTS = ("market", "folders", "msmt17", "cuhk03_np")  # siamese_reid.data.datasets.LAYOUTS
CUHK03_SUBSETS = ("detected", "labeled")  # siamese_reid.data.cuhk03.CUHK03_SUBSETS
MSMT17_VAL = ("unused", "train")  # siamese_reid.data.msmt17.MSMT17_VAL
BACKBONES = (  # siamese_reid.model.embedding.BACKBONES
    "vgg16",
    "resnet50",
    "mobilenetv2",
    "osnet_x1_0",
    "osnet_x0_75",
    "osnet_x0_5",
    "osnet_x0_25",
    "osnet_ibn_x1_0",
    "osnet_ain_x1_0",
)
FEATURE_LAYERS = ("none", "torchreid")  # siamese_reid.model.embedding.FEATURE_LAYERS
POOLINGS = ("avg", "max", "gem")  # siamese_reid.model.embedding.POOLINGS
BRANCHES = ("batched", "separate")  # siamese_reid.model.siamese.BRANCHES
LOSSES = ("batch_hard", "semihard", "batch_all", "triplet")  # siamese_reid.losses.triplet.LOSSES
LOSS_DISTANCE_METRICS = ("L2", "squared-L2", "angular")  # siamese_reid.losses.distances.DISTANCE_METRICS
TRIPLET_FEATURES = ("embedding", "pre_bnneck")  # siamese_reid.model.training_model.TRIPLET_FEATURES
ERASING_FILLS = ("random", "mean")  # siamese_reid.data.images.ERASING_FILLS
SAMPLERS = ("pk", "triplet")  # siamese_reid.data.pipeline.SAMPLERS
OPTIMIZERS = ("adam", "adamw", "sgd")  # siamese_reid.training.OPTIMIZERS
SCHEDULES = ("cosine", "constant", "multistep")  # siamese_reid.training.SCHEDULES
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")  # siamese_reid.precision.PRECISIONS
STRATEGIES = ("default", "mirrored", "multi_worker")  # siamese_reid.distribution.STRATEGIES
EVALUATION_METRICS = ("euclidean", "cosine")  # siamese_reid.evaluation.distances.METRICS
AP_DEFINITIONS = ("torchreid", "market_official")  # siamese_reid.evaluation.ranking.AP_DEFINITIONS
LAST_STAGE_STRIDED_LAYERS = ("resnet50",)  # siamese_reid.model.embedding.LAST_STAGE_STRIDED_LAYERS

CHOICE_SOURCES = {
    "LAYOUTS": "siamese_reid.data.datasets:LAYOUTS",
    "CUHK03_SUBSETS": "siamese_reid.data.cuhk03:CUHK03_SUBSETS",
    "MSMT17_VAL": "siamese_reid.data.msmt17:MSMT17_VAL",
    "BACKBONES": "siamese_reid.model.embedding:BACKBONES",
    "FEATURE_LAYERS": "siamese_reid.model.embedding:FEATURE_LAYERS",
    "POOLINGS": "siamese_reid.model.embedding:POOLINGS",
    "BRANCHES": "siamese_reid.model.siamese:BRANCHES",
    "LOSSES": "siamese_reid.losses.triplet:LOSSES",
    "LOSS_DISTANCE_METRICS": "siamese_reid.losses.distances:DISTANCE_METRICS",
    "TRIPLET_FEATURES": "siamese_reid.model.training_model:TRIPLET_FEATURES",
    "ERASING_FILLS": "siamese_reid.data.images:ERASING_FILLS",
    "SAMPLERS": "siamese_reid.data.pipeline:SAMPLERS",
    "OPTIMIZERS": "siamese_reid.training:OPTIMIZERS",
    "SCHEDULES": "siamese_reid.training:SCHEDULES",
    "PRECISIONS": "siamese_reid.precision:PRECISIONS",
    "STRATEGIES": "siamese_reid.distribution:STRATEGIES",
    "EVALUATION_METRICS": "siamese_reid.evaluation.distances:METRICS",
    "AP_DEFINITIONS": "siamese_reid.evaluation.ranking:AP_DEFINITIONS",
    "LAST_STAGE_STRIDED_LAYERS": "siamese_reid.model.embedding:LAST_STAGE_STRIDED_LAYERS",
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
    name: str = _field("batch_hard", choices=LOSSES)
    margin: float = _field(0.3, minimum=0.0)
    soft: bool = _field(False)
    distance_metric: str = _field("L2", choices=LOSS_DISTANCE_METRICS)
    triplet_weight: float = _field(1.0, minimum=0.0)
    triplet_feature: str = _field("embedding", choices=TRIPLET_FEATURES)
    id_weight: float = _field(0.0, minimum=0.0)
    label_smoothing: float = _field(0.1, minimum=0.0, maximum=1.0)
    center_weight: float = _field(0.0, minimum=0.0)
    center_learning_rate: float = _field(0.5, minimum=0.0)


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


def _closest(name, valid_names):
    matches = difflib.get_close_matches(str(name), valid_names, n=1, cutoff=0.5)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def _coerce_entries(key, value, entry_class):
    """A list of mappings (such as data.extra_train) -> a tuple of frozen `entry_class`."""
    keys = ", ".join(f.name for f in dataclasses.fields(entry_class))
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ReIDError(f"config key '{key}' must be a list of mappings with keys {keys}, got {value!r}")
    entries = []
    for index, entry in enumerate(value):
        entry_key = f"{key}[{index}]"
        if not isinstance(entry, dict):
            raise ReIDError(f"config key '{entry_key}' must be a mapping with keys {keys}, got {entry!r}")
        required = [f.name for f in dataclasses.fields(entry_class) if f.default is dataclasses.MISSING]
        missing = [name for name in required if entry.get(name) is None]
        if missing:
            raise ReIDError(f"config key '{entry_key}.{missing[0]}' is required")
        entries.append(_build_section(entry_key, entry_class, entry))
    return tuple(entries)


def _coerce_tuple(key, value, annotation, field):
    """A YAML list (or a single value) as a tuple, each item checked against the field's rule."""
    item_type = typing.get_args(annotation)[0]
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(_coerce(f"{key}[{index}]", item, item_type, field) for index, item in enumerate(items))


def _coerce(key, value, annotation, field):
    """Checks `value` against the field's type and rule; returns it converted."""
    if typing.get_origin(annotation) is tuple:
        item_type = typing.get_args(annotation)[0]
        if dataclasses.is_dataclass(item_type):
            return _coerce_entries(key, value, item_type)
        return _coerce_tuple(key, value, annotation, field)
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if value is None:
        if type(None) in allowed:
            return None
        raise ReIDError(f"config key '{key}' must not be empty")
    base = next((t for t in allowed if t is not type(None)), annotation)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is float and isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads 1e-3 (no dot) as a string: accept it as a number.
        try:
            value = float(value)
        except ValueError:
            pass
    if base is str and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ReIDError(f"config key '{key}' must be of type {base.__name__}, got {value!r}")
    if base is float and not math.isfinite(value):  # .nan passes every range check, .inf most
        raise ReIDError(f"config key '{key}' must be a finite number, got {value!r}")
    rule = field.metadata
    if rule.get("choices"):
        names = list(rule["choices"])
        if value not in names:
            raise ReIDError(f"config key '{key}' must be one of {names}, got {value!r}" + _closest(str(value), names))
    if rule.get("minimum") is not None and value < rule["minimum"]:
        raise ReIDError(f"config key '{key}' must be >= {rule['minimum']}, got {value!r}")
    if rule.get("maximum") is not None and value > rule["maximum"]:
        raise ReIDError(f"config key '{key}' must be <= {rule['maximum']}, got {value!r}")
    return value


def _build_section(section_name, section_class, values):
    if not isinstance(values, dict):
        raise ReIDError(f"config section '{section_name}' must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(section_class)}
    hints = typing.get_type_hints(section_class)
    kwargs = {}
    for name, value in values.items():
        key = f"{section_name}.{name}"
        if name not in fields:
            raise ReIDError(f"unknown config key '{key}'" + _closest(name, list(fields)))
        kwargs[name] = _coerce(key, value, hints[name], fields[name])
    return section_class(**kwargs)


def config_from_dict(raw):
    """Builds a validated `Config` from nested dicts (missing keys take their defaults)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ReIDError("the config file must be a mapping of sections")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ReIDError(f"unknown config section '{name}'" + _closest(name, list(sections)))
        built[name] = _build_section(name, hints[name], values or {})
    config = Config(**built)
    _check_consistency(config)
    return config


def _check_consistency(config):
    """Rules that involve more than one key."""
    if config.loss.name == "triplet" and config.training.sampler != "triplet":
        raise ReIDError("config key 'loss.name' 'triplet' needs 'training.sampler: triplet' (explicit triplets)")
    if config.loss.name == "semihard" and config.loss.soft:
        raise ReIDError("config key 'loss.soft' must be false with 'loss.name: semihard' (it has no soft margin)")
    if config.model.freeze_blocks > config.model.vgg_blocks and config.model.backbone == "vgg16":
        raise ReIDError(
            f"config key 'model.freeze_blocks' ({config.model.freeze_blocks}) cannot exceed "
            f"'model.vgg_blocks' ({config.model.vgg_blocks})"
        )
    if config.model.embedding_dim == 1:
        raise ReIDError(
            "config key 'model.embedding_dim' must be 0 (no projection: the pooled backbone feature) or at least 2, "
            "got 1 (a unit-length 1-d embedding is only a sign)"
        )
    _check_recipe(config.model, config.loss, config.training)


def _check_recipe(model, loss, training):
    """The strong-baseline switches: what each needs from the others."""
    if training.sampler == "triplet":
        for key, used in (
            ("loss.triplet_weight", loss.triplet_weight != 1),
            ("loss.id_weight", loss.id_weight > 0),
            ("loss.center_weight", loss.center_weight > 0),
            ("loss.triplet_feature", loss.triplet_feature != "embedding"),
        ):
            if used:
                raise ReIDError(
                    f"config key '{key}' needs 'training.sampler: pk': the triplet sampler trains the triplet "
                    "loss on the embedding only"
                )
    if loss.triplet_weight == 0 and loss.id_weight == 0:
        raise ReIDError("config keys 'loss.triplet_weight' and 'loss.id_weight' are both 0: set one of them above 0")
    if loss.triplet_feature == "pre_bnneck" and not model.bnneck:
        raise ReIDError("config key 'loss.triplet_feature' 'pre_bnneck' needs 'model.bnneck: true'")
    strided = list(LAST_STAGE_STRIDED_LAYERS)
    if model.last_stride == 1 and model.backbone not in strided:
        raise ReIDError(f"config key 'model.last_stride' 1 is implemented for model.backbone {strided} only")
    milestones = training.lr_milestones
    if any(later <= earlier for earlier, later in zip(milestones, milestones[1:], strict=False)):
        raise ReIDError(f"config key 'training.lr_milestones' must be increasing epochs, got {list(milestones)}")


def parse_override(text):
    """Parses `section.key=value` into (section, key, value); the value is read as YAML."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ReIDError(f"an override must read section.key=value, got '{text}'")
    dotted, raw_value = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return section, key, value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second `training:` section at the end of a file drops every key of the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the keys beside it, by design
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                problem = f"'{key}' is given twice (the second would silently replace the first)"
                raise yaml.constructor.ConstructorError(problem=problem, problem_mark=key_node.start_mark)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def _read_config_file(path):
    """The file's sections as a dict of dicts; every way the file itself can be wrong is a ReIDError."""
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"config file '{path}' " + ("is a folder" if path.is_dir() else "does not exist"))
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ReIDError(f"config file '{path}' is not UTF-8 text") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(error, "problem", None)
        raise ReIDError(f"config file '{path}' is not valid YAML{line}" + (f": {problem}" if problem else "")) from None
    if raw is None:
        # an emptied (or truncated) file would otherwise train with the built-in defaults, unnoticed
        raise ReIDError(
            f"config file '{path}' is empty: fill it in (the repository's config.yaml lists every key) "
            "or delete it to use the built-in defaults"
        )
    if not isinstance(raw, dict):
        raise ReIDError(f"config file '{path}' must be a mapping of sections")
    for name, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise ReIDError(
                f"config section '{name}' in '{path}' must be a mapping of keys to values "
                f"(indented 'key: value' lines), got {values!r}"
            )
    return {name: dict(values or {}) for name, values in raw.items()}


def load_config(path=None, overrides=()):
    """Loads `path` (YAML) and applies `section.key=value` overrides.

    Args:
      path: the YAML file, or None for the built-in defaults.
      overrides: iterable of `section.key=value` strings; later ones win.

    Returns:
      A frozen `Config`.
    """
    raw = {} if path is None else _with_keys_older_files_lack(_read_config_file(path))
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


# The whole model section as saved before `model.stripes` existed: a file listing all of these
# and no `stripes` (a run folder's config.yaml, or a copy of the repository's config.yaml from
# then) describes a globally pooled tower. Filling in today's default instead would rebuild
# such a run with 4 stripes: `--resume` would fail on weight shapes, a re-run would silently
# train another model.
_MODEL_KEYS_BEFORE_STRIPES = {
    "backbone", "weights", "vgg_blocks", "last_stride", "freeze_blocks", "pooling", "embedding_dim", "bnneck",
    "branches",
}  # fmt: skip


def _with_keys_older_files_lack(raw):
    model = raw.get("model")
    if isinstance(model, dict) and "stripes" not in model and _MODEL_KEYS_BEFORE_STRIPES <= model.keys():
        raw = {**raw, "model": {**model, "stripes": 1}}
    return raw


def replace(config, **sections):
    """Returns `config` with whole sections swapped, e.g. replace(config, data=new_data)."""
    return dataclasses.replace(config, **sections)


def _plain(value):
    # tuples (data.extra_train entries, training.lr_milestones) are lists in YAML
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def config_to_dict(config):
    """Nested dicts of plain YAML values (tuples as lists)."""
    return {
        section: {key: _plain(value) for key, value in values.items()}
        for section, values in dataclasses.asdict(config).items()
    }


def save_config(config, path):
    from siamese_reid.files import write_text

    write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
