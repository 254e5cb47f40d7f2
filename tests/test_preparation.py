"""Preparing a run's data (`siamese_reid.data.preparation`): the demo standing in for a missing
dataset, unreadable images, junk and distractors, splits no run can use, and the summary."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from siamese_reid.config import load_config
from siamese_reid.data.preparation import prepare_data, resolve_dataset
from siamese_reid.errors import ReIDError

# Small inputs: 32x32 images.
FAST = ["data.image_height=32", "data.image_width=32"]


def test_the_demo_dataset_is_named_whenever_it_stands_in_for_data_root(tmp_path, caplog):
    # `--set data.root=$UNSET` reads as null: the run trained on the demo with no word about it
    demo = [f"demo.dir={tmp_path / 'demo'}", "demo.num_train_identities=3", "demo.num_test_identities=2"]
    config = load_config(None, demo)
    caplog.set_level(logging.INFO, logger="siamese_reid")
    resolve_dataset(config)
    assert "data.root is not set: generated the demo dataset" in caplog.messages[-1]
    resolve_dataset(config)
    assert "data.root is not set: using the demo dataset" in caplog.messages[-1]


def test_a_dataset_of_unreadable_images_names_them(tmp_path):
    # "fewer than 2 usable identities" alone would hide that every file is unreadable: the files are named
    for split, frame in (("bounding_box_train", 1), ("query", 2), ("bounding_box_test", 3)):
        for pid in (1, 2):
            for camera in (1, 2):
                path = tmp_path / "data" / split / f"000{pid}_c{camera}s1_00000{frame}_01.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"not a JPEG")
    config = load_config(None, [f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ReIDError) as caught:
        prepare_data(config, tmp_path / "run")
    message = str(caught.value)
    assert "fewer than 2 usable identities" in message and "12 image file(s) could not be read" in message
    assert "bounding_box_train/0001_c1s1_000001_01.jpg" in message


def test_identity_folders_named_in_another_encoding_reach_the_figures(tmp_path, write_image):
    # a Latin-1 folder name (é = 0xE9) must not reach matplotlib as a lone surrogate, which stops it
    from siamese_reid.evaluation import compute_distances
    from siamese_reid.figures import plot_retrieval_examples, save_figure

    root = tmp_path / "people"
    for name in (b"\xe9t\xe9", b"caf\xe9", b"na\xefve", b"\xe0 la carte"):
        for shot in range(3):
            write_image(Path(os.fsdecode(bytes(root) + b"/" + name + b"/%d.png" % shot)), seed=shot, image_format="PNG")
    config = load_config(None, [f"data.root={root}", "data.layout=folders"])
    _, data = prepare_data(config, tmp_path / "run")
    assert sorted(data.identity_names.values()) == ["\\xe0 la carte", "\\xe9t\\xe9", "caf\\xe9", "na\\xefve"]
    features = np.random.default_rng(0).normal(size=(len(data.query) + len(data.gallery), 4))
    distances = compute_distances(features[: len(data.query)], features[len(data.query) :], "euclidean")
    figure = plot_retrieval_examples([0], data.query, data.gallery, distances, 2, data.identity_names)
    save_figure(figure, tmp_path / "examples.png")
    assert (tmp_path / "examples.png").stat().st_size > 1000


def test_junk_and_distractors_in_the_training_folder_are_not_trained_as_people(tmp_path, tiny_demo, project_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_demo, root)
    # junk and distractor boxes inside the training folder, as Market-1501's own test folder has
    gallery = sorted((root / "bounding_box_test").glob("*.jpg"))
    extras = [g for g in gallery if g.name.startswith(("-1_", "0000_"))]
    for path in extras:
        shutil.copy(path, root / "bounding_box_train" / path.name)
    config = load_config(project_root / "config.yaml", FAST + [f"data.root={root}"])
    _, data = prepare_data(config, tmp_path)
    assert all(sample.pid > 0 for sample in data.train)
    junk = sum(p.name.startswith("-1_") for p in extras)
    distractors = len(extras) - junk
    assert junk and distractors
    note = f"excluded from training: {junk} junk (identity -1) and {distractors} distractor (identity 0) images"
    assert any(note in warning for warning in data.warnings)
    assert note in (tmp_path / "data_warnings.txt").read_text()
    assert data.summary["train"]["junk_images"] == 0 and data.summary["train"]["distractor_images"] == 0


def test_queries_without_any_possible_match_fail_before_training(tmp_path, project_root, write_image):
    root = tmp_path / "data"
    for split, names in (
        (
            "bounding_box_train",
            [
                "0001_c1s1_000001_01.jpg",
                "0001_c2s1_000002_01.jpg",
                "0002_c1s1_000003_01.jpg",
                "0002_c2s1_000004_01.jpg",
            ],
        ),
        ("query", ["0003_c1s1_000005_01.jpg", "0004_c1s1_000006_01.jpg"]),
        ("bounding_box_test", ["0005_c2s1_000007_01.jpg", "0003_c1s1_000008_01.jpg"]),  # 0003 only same camera
    ):
        for index, name in enumerate(names):
            write_image(root / split / name, seed=index)
    config = load_config(project_root / "config.yaml", FAST + [f"data.root={root}"])
    with pytest.raises(ReIDError, match="no query identity has a gallery image from another camera"):
        prepare_data(config, tmp_path)


def test_preparing_data_logs_the_summary_and_prints_nothing(tmp_path, tiny_demo, capsys, caplog):
    # the library logs, so that a notebook or a service can quiet it: nothing goes to stdout
    caplog.set_level(logging.INFO, logger="siamese_reid")
    config = load_config(None, [f"data.root={tiny_demo}"])
    _, data = prepare_data(config, tmp_path)
    assert capsys.readouterr().out == ""
    assert caplog.messages[0] == "dataset summary:"
    train_line = next(message for message in caplog.messages if message.lstrip().startswith("train "))
    assert f"{data.summary['train']['images']} images" in train_line


def test_asking_for_a_benchmark_without_its_folder_does_not_train_on_the_demo():
    from siamese_reid.data.preparation import resolve_dataset

    with pytest.raises(ReIDError, match="data.layout msmt17 needs data.root"):
        resolve_dataset(load_config(None, ["data.layout=msmt17"]))
