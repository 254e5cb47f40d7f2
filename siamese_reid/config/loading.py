"""Loading a config: YAML file -> overrides -> typed, validated `Config`, and back to YAML.

A typo or an out-of-range value fails before any work starts, naming the key and the closest
valid one.
"""

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Hashable
from pathlib import Path

import yaml

from siamese_reid.config.rules import check_consistency
from siamese_reid.config.schema import Config
from siamese_reid.errors import ReIDError


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
    check_consistency(config)
    return config


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
    loss = raw.get("loss")
    if isinstance(loss, dict) and loss.get("name") == "triplet":
        # older run folders of the triplet sampler saved the loss it chose for itself; the
        # sampler still chooses it, so the key reads as the default
        raw = {**raw, "loss": {**loss, "name": "batch_hard"}}
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
