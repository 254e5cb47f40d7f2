"""What train.py and evaluate.py share: arguments, error handling, config adapters, data.

This is the one layer below the scripts that sees the whole `Config`; it hands the library
plain arguments or a single section (the adapters below).
"""

import datetime
import functools
import json
import sys
from pathlib import Path

from siamese_reid.config import load_config, replace, save_config
from siamese_reid.data.demo import DemoSpec, ensure_demo_dataset
from siamese_reid.data.records import read_dataset, summarize_split
from siamese_reid.data.scan import scan_samples
from siamese_reid.errors import ReIDError


def add_common_arguments(parser):
    parser.add_argument("--config", default=None, help="YAML config (default: config.yaml if present)")
    parser.add_argument("--train_dir", default=None, help="training images (overrides data.train_dir)")
    parser.add_argument("--query_dir", default=None, help="query images (overrides data.query_dir)")
    parser.add_argument("--gallery_dir", default=None, help="gallery images (overrides data.gallery_dir)")
    parser.add_argument("--output_dir", default=None, help="where the run is written")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key; repeatable",
    )


def config_from_arguments(arguments, base_config_path=None):
    """Loads the config file and applies --set overrides and the data folder flags."""
    path = arguments.config or base_config_path
    if path is None and Path("config.yaml").is_file():
        path = "config.yaml"
    overrides = list(arguments.overrides)
    for flag in ("train_dir", "query_dir", "gallery_dir"):
        value = getattr(arguments, flag, None)
        if value is not None:
            overrides.append(f"data.{flag}={json.dumps(str(value))}")
    return load_config(path, overrides)


def exit_on_user_error(main):
    """Runs `main`; a ReIDError becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except ReIDError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped


def new_run_dir(output_dir, run_name):
    name = run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def tower_spec(config):
    """Adapter: the model and data sections -> the tower's plain description."""
    from siamese_reid.model.embedding import TowerSpec  # imports TensorFlow: only when needed

    model = config.model
    return TowerSpec(
        backbone=model.backbone,
        weights=model.weights,
        image_height=config.data.image_height,
        image_width=config.data.image_width,
        vgg_blocks=model.vgg_blocks,
        freeze_blocks=model.freeze_blocks,
        pooling=model.pooling,
        embedding_dim=model.embedding_dim,
        bnneck=model.bnneck,
    )


def resolve_demo(config):
    """Generates the demo dataset when no dataset is configured; returns the config to use."""
    data = config.data
    if data.root or data.train_dir or data.query_dir or data.gallery_dir:
        return config
    demo = config.demo
    spec = DemoSpec(**{k: getattr(demo, k) for k in DemoSpec.__dataclass_fields__})
    if ensure_demo_dataset(demo.dir, spec):
        print(f"generated the demo dataset in {demo.dir}", flush=True)
    return replace(config, data=replace(data, root=demo.dir, layout="market"))


def prepare_data(config, run_dir, need_train=True):
    """Reads, checks and summarises the splits; records warnings and the summary in run_dir.

    Returns (config actually used, DatasetSplits with only decodable images).
    """
    config = resolve_demo(config)
    data = config.data
    splits = read_dataset(
        data.root,
        data.train_dir,
        data.query_dir,
        data.gallery_dir,
        data.layout,
        data.test_fraction,
        data.split_seed,
        need_train=need_train,
    )
    warnings = list(splits.warnings)
    usable = {}
    for name in ("train", "query", "gallery"):
        samples, skipped = scan_samples(getattr(splits, name), Path(run_dir) / "converted_images")
        warnings += [f"skipped '{path}': {reason}" for path, reason in skipped]
        usable[name] = samples
    summary = {name: summarize_split(samples) for name, samples in usable.items() if samples or need_train}
    _check_splits(usable, summary, need_train, warnings)
    _report_data(summary, warnings, run_dir)
    return config, splits._replace(warnings=warnings, **usable)


def _check_splits(usable, summary, need_train, warnings):
    if need_train and summary["train"]["identities"] < 2:
        raise ReIDError("the training split has fewer than 2 usable identities: triplets need negatives")
    for name in ("query", "gallery"):
        if not usable[name]:
            raise ReIDError(f"the {name} split has no usable image")
    if summary["query"]["identities"] < 2:
        warnings.append("the query split has a single identity: rank-1 and mAP say little")


def _report_data(summary, warnings, run_dir):
    print("dataset summary:")
    for name, counts in summary.items():
        print(
            f"  {name:<8} {counts['images']:>6} images  {counts['identities']:>5} identities  "
            f"{counts['cameras']:>2} cameras  {counts['single_image_identities']:>4} single-image identities"
            + (f"  {counts['distractor_images']} distractors" if counts["distractor_images"] else "")
            + (f"  {counts['junk_images']} junk" if counts["junk_images"] else "")
        )
    (Path(run_dir) / "dataset_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if warnings:
        (Path(run_dir) / "data_warnings.txt").write_text("\n".join(warnings) + "\n")
        print(f"warning: {len(warnings)} data problem(s), listed in {Path(run_dir) / 'data_warnings.txt'}")
        for line in warnings[:5]:
            print(f"  {line}")


def save_run_config(config, run_dir):
    save_config(config, Path(run_dir) / "config.yaml")


def image_size(config):
    return config.data.image_height, config.data.image_width
