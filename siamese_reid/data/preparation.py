"""The data a run uses: the dataset read (the demo generated when none is set), every image
checked decodable, the splits checked usable, and their summary recorded in the output folder.

Checks that need no training run before a run folder exists (`check_dataset`); the
splits themselves are prepared into the run folder (`prepare_data`).
"""

import dataclasses
import logging
from pathlib import Path

from siamese_reid.config import replace
from siamese_reid.data.datasets import dataset_name, read_dataset, read_extra_training
from siamese_reid.data.demo import ensure_demo_dataset
from siamese_reid.data.readers import summarize_split
from siamese_reid.data.scan import printable, scan_samples
from siamese_reid.data.splits import person_samples, split_validation
from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.protocol import check_queries_have_matches
from siamese_reid.files import write_json, write_text
from siamese_reid.runs import DATA_WARNINGS, DATASET_SUMMARY, IDENTITY_NAMES

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """The splits a run uses, every image checked decodable.

    `validation_query` and `validation_gallery` are empty unless `data.validation_fraction`
    holds training identities out.
    """

    train: list
    query: list
    gallery: list
    validation_query: list
    validation_gallery: list
    summary: dict
    warnings: list
    identity_names: dict  # pid -> folder name (folder-per-identity datasets), else empty

    @property
    def has_validation(self):
        return bool(self.validation_query)


def resolve_dataset(config):
    """Generates the demo dataset when no dataset is configured; returns the config to use. The
    demo stands in for a missing data.root only with the default layout: asking for MSMT17
    without saying where it is must not train on the demo."""
    data = config.data
    if data.root or data.train_dir or data.query_dir or data.gallery_dir:
        return config
    if data.layout != "market":
        raise ReIDError(f"data.layout {data.layout} needs data.root, the dataset's folder")
    # said every time: `--set data.root=$UNSET_VARIABLE` reads as null and trains on the demo
    verb = "generated" if ensure_demo_dataset(config.demo) else "using"
    logger.info(f"data.root is not set: {verb} the demo dataset in {config.demo.dir}")
    return replace(config, data=replace(data, root=str(Path(config.demo.dir).expanduser()), layout="market"))


def check_dataset(config):
    """The dataset checks that need no training, run before a run folder exists: the dataset
    is there (the demo generated if needed) and some query can be matched at all. Returns the
    config to use (demo resolved)."""
    config = resolve_dataset(config)
    splits = read_dataset(config.data)
    read_extra_training(config.data, splits)
    check_queries_have_matches(splits.query, splits.gallery)
    return config


def prepare_data(config, output_dir, need_train=True):
    """Reads, checks and summarises the splits; records the summary and warnings in output_dir.

    Junk and distractor images are dropped from training (and counted), and a validation split
    is held out of the training identities when `data.validation_fraction` asks for one. The
    training splits of `data.extra_train` then join training (identities kept apart), each
    counted in the summary as "train: <folder name>"; validation stays on the main dataset.

    Returns:
      (the config actually used, with the demo dataset resolved; `PreparedData`).
    """
    config = resolve_dataset(config)
    data = config.data
    splits = read_dataset(data, need_train=need_train)
    extra = read_extra_training(data, splits) if need_train else []
    warnings = list(splits.warnings) + [line for training_set in extra for line in training_set.warnings]
    cache = Path(output_dir) / "converted_images"
    usable, unreadable = {"train": []}, []
    # an evaluation never reads the training images: scanning them would only cost time
    for name in ("train", "query", "gallery") if need_train else ("query", "gallery"):
        usable[name] = _scan(getattr(splits, name), cache, unreadable)
    train, excluded = person_samples(usable["train"])
    validation_query, validation_gallery = [], []
    if need_train and data.validation_fraction > 0:
        train, validation_query, validation_gallery = split_validation(train, data.validation_fraction, data.split_seed)
    per_dataset = [(dataset_name(data), train)]
    for training_set in extra:
        people, dropped = person_samples(_scan(training_set.samples, cache, unreadable))
        per_dataset.append((training_set.name, people))
        excluded = {kind: excluded[kind] + dropped[kind] for kind in excluded}
    if excluded["junk"] or excluded["distractors"]:
        warnings.append(
            f"excluded from training: {excluded['junk']} junk (identity -1) and "
            f"{excluded['distractors']} distractor (identity 0) images, which are not people to learn"
        )
    prepared = {
        "train": [sample for _, samples in per_dataset for sample in samples],
        "query": usable["query"],
        "gallery": usable["gallery"],
        "validation_query": validation_query,
        "validation_gallery": validation_gallery,
    }
    summary = {name: summarize_split(samples) for name, samples in prepared.items() if samples}
    if need_train:
        summary.setdefault("train", summarize_split(prepared["train"]))
    if extra:  # per-dataset rows right after the combined one
        rows = {}
        for number, (name, samples) in enumerate(per_dataset, start=1):
            row = f"train: {name}" if f"train: {name}" not in rows else f"train: {name} ({number})"
            rows[row] = summarize_split(samples)
        summary = {"train": summary.pop("train"), **rows, **summary}
    warnings += [f"skipped '{path}': {reason}" for path, reason in unreadable]
    try:
        warnings += _check_splits(prepared, summary, need_train)
    except ReIDError as error:
        if not unreadable:
            raise
        # the files behind a too-small split are the cause a user needs, not just the count
        path, reason = unreadable[0]
        unread = f"{len(unreadable)} image file(s) could not be read, e.g. '{path}': {reason}"
        raise ReIDError(f"{error}; {unread}") from None
    _record_data(summary, warnings, output_dir)
    # folder names that are not UTF-8 would stop matplotlib and text files: shown as \xNN
    identity_names = {pid: printable(name) for pid, name in (splits.identity_names or {}).items()}
    if identity_names:
        write_json(Path(output_dir) / IDENTITY_NAMES, identity_names)
    return config, PreparedData(**prepared, summary=summary, warnings=warnings, identity_names=identity_names)


def _scan(samples, cache, unreadable):
    """The samples whose images decode (converted where TensorFlow needs it); the others are
    added to `unreadable` as (path, reason)."""
    usable, skipped = scan_samples(samples, cache)
    unreadable += skipped
    return usable


def _check_splits(prepared, summary, need_train):
    """Raises for splits no run can use; returns warnings for ones that say little."""
    if need_train and summary["train"]["identities"] < 2:
        raise ReIDError("the training split has fewer than 2 usable identities: triplets need negatives")
    for name in ("query", "gallery"):
        if not prepared[name]:
            raise ReIDError(f"the {name} split has no usable image")
    check_queries_have_matches(prepared["query"], prepared["gallery"])
    notes = []
    shared = {s.path for s in prepared["query"]} & {s.path for s in prepared["gallery"]}
    if shared:
        notes.append(
            f"{len(shared)} images are in both the query and the gallery split (the same folder?): "
            "each is ignored as its own match"
        )
        logger.info(f"note: {notes[-1]}")
    if summary["query"]["identities"] < 2:
        notes.append("the query split has a single identity: rank-1 and mAP say little")
    return notes


def _record_data(summary, warnings, output_dir):
    output_dir = Path(output_dir)
    write_json(output_dir / DATASET_SUMMARY, summary)
    if warnings:
        write_text(output_dir / DATA_WARNINGS, "\n".join(warnings) + "\n")
    from siamese_reid.formatting import log_data_summary  # the one place that formats a summary

    log_data_summary(summary, warnings, output_dir / DATA_WARNINGS)


def report_sampling(train, training):
    """Logs the training identities the sampler cannot use fully."""
    from siamese_reid.data import samplers

    pids = [s.pid for s in train]
    singles = samplers.singleton_identities(pids)
    if singles:
        logger.info(f"note: {len(singles)} training identities have a single image and are never anchors")
    if training.sampler == "pk":
        short = samplers.identities_below(pids, training.images_per_identity)
        if short:
            logger.info(
                f"note: {len(short)} identities have fewer than K={training.images_per_identity} "
                "images and are sampled with replacement"
            )
