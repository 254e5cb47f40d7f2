"""Typed, frozen configuration loaded from `config.yaml` (or a recipe in `configs/`) plus
`--set section.key=value` overrides.

Only the entry points and `siamese_reid.experiment` see the whole `Config`; library code
receives one section or plain arguments. Loading a config is plain data: it imports no
TensorFlow.

- `schema`: every section and key, with its type, default and range; the valid names of each
  choice key;
- `loading`: YAML and overrides in, a validated `Config` out, and back to YAML;
- `rules`: the rules that involve more than one key.
"""

from siamese_reid.config.loading import (
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    replace,
    save_config,
)
from siamese_reid.config.schema import (
    AP_DEFINITIONS,
    BACKBONES,
    BATCH_LOSSES,
    BRANCHES,
    CHOICE_SOURCES,
    CUHK03_SUBSETS,
    ERASING_FILLS,
    EVALUATION_METRICS,
    FEATURE_LAYERS,
    LAYOUTS,
    LOSS_DISTANCE_METRICS,
    MSMT17_VAL,
    OPTIMIZERS,
    POOLINGS,
    PRECISIONS,
    SAMPLERS,
    SCHEDULES,
    STRATEGIES,
    TRIPLET_FEATURES,
    AugmentConfig,
    Config,
    DataConfig,
    DemoConfig,
    EvaluationConfig,
    ExtraTrainingSet,
    LossConfig,
    ModelConfig,
    OutputConfig,
    TrainingConfig,
)

__all__ = [
    "AP_DEFINITIONS",
    "AugmentConfig",
    "BACKBONES",
    "BATCH_LOSSES",
    "BRANCHES",
    "CUHK03_SUBSETS",
    "CHOICE_SOURCES",
    "Config",
    "DataConfig",
    "DemoConfig",
    "ERASING_FILLS",
    "EVALUATION_METRICS",
    "EvaluationConfig",
    "ExtraTrainingSet",
    "FEATURE_LAYERS",
    "LAYOUTS",
    "LOSS_DISTANCE_METRICS",
    "MSMT17_VAL",
    "LossConfig",
    "ModelConfig",
    "OPTIMIZERS",
    "OutputConfig",
    "POOLINGS",
    "PRECISIONS",
    "SAMPLERS",
    "SCHEDULES",
    "STRATEGIES",
    "TRIPLET_FEATURES",
    "TrainingConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_override",
    "replace",
    "save_config",
]
