from pathlib import Path

import numpy as np
import pytest

from siamese_reid.config import DataConfig
from siamese_reid.data.datasets import read_dataset
from siamese_reid.data.readers import (
    Sample,
    parse_market_name,
    read_market_folder,
    split_identity_folders,
    summarize_split,
)
from siamese_reid.data.scan import scan_samples
from siamese_reid.errors import ReIDError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 1)),
        ("-1_c3s2_012345_01.jpg", (-1, 3)),
        ("0000_c6s4_002452_02.jpg", (0, 6)),
        ("0001_c2_f0046182.jpg", (1, 2)),  # DukeMTMC-reID
        ("Thumbs.db", None),
        ("person_1.jpg", None),
    ],
)
def test_parse_market_name(name, expected):
    assert parse_market_name(name) == expected


def test_market_reader_keeps_junk_and_distractors(tmp_path, write_image):
    for name in ("0002_c1s1_000451_03.jpg", "-1_c1s1_000001_01.jpg", "0000_c2s1_000002_01.jpg"):
        write_image(tmp_path / name)
    samples, _ = read_market_folder(tmp_path)
    assert sorted((s.pid, s.camid) for s in samples) == [(-1, 1), (0, 2), (2, 1)]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(ReIDError, match="does not exist"):
        read_market_folder(tmp_path / "nope", what="query")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReIDError, match="query folder .* is empty"):
        read_market_folder(tmp_path / "empty", what="query")


def test_folder_without_parseable_names(tmp_path, write_image):
    write_image(tmp_path / "person_1.jpg")
    with pytest.raises(ReIDError, match="Market-1501-style name"):
        read_market_folder(tmp_path)


def test_non_image_and_unparseable_files_are_skipped_with_warning(tmp_path, write_image):
    write_image(tmp_path / "0002_c1s1_000451_03.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    write_image(tmp_path / "person.jpg")
    samples, warnings = read_market_folder(tmp_path)
    assert len(samples) == 1
    assert any("notes.txt" in w and "not an image" in w for w in warnings)
    assert any("person.jpg" in w for w in warnings)


def test_corrupt_and_truncated_images_are_skipped_and_listed(tmp_path, write_image):
    good = tmp_path / "0001_c1s1_000001_01.jpg"
    write_image(good, size=(64, 32))
    truncated = tmp_path / "0001_c2s1_000002_01.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    corrupt = tmp_path / "0002_c1s1_000003_01.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    samples, _ = read_market_folder(tmp_path)
    usable, skipped = scan_samples(samples, tmp_path / "cache")
    assert [s.path for s in usable] == [str(good)]
    assert {path for path, _ in skipped} == {str(truncated), str(corrupt)}


def test_pgm_is_converted_for_tensorflow(tmp_path, write_image):
    write_image(tmp_path / "0001_c1s1_000001_01.pgm", mode="L", image_format="PPM")
    usable, skipped = scan_samples(read_market_folder(tmp_path)[0], tmp_path / "cache")
    assert not skipped
    assert usable[0].path.endswith(".png") and (usable[0].pid, usable[0].camid) == (1, 1)
    # what a person is shown is their own file, and it survives the embeddings file
    assert usable[0].display_path == str((tmp_path / "0001_c1s1_000001_01.pgm").resolve())
    from siamese_reid.evaluation.embeddings import load_embeddings, save_embeddings

    save_embeddings(tmp_path / "e.npz", np.zeros((1, 2), np.float32), usable)
    assert load_embeddings(tmp_path / "e.npz")[1] == usable


def test_identity_folders_share_identity_numbers_across_splits(tmp_path, write_image):
    for split, names in (("train", ["alice", "bob"]), ("query", ["carol"]), ("gallery", ["carol", "dave"])):
        for name in names:
            write_image(tmp_path / split / name / "1.png", image_format="PNG")
            write_image(tmp_path / split / name / "2.png", image_format="PNG")
    data = DataConfig(
        train_dir=str(tmp_path / "train"),
        query_dir=str(tmp_path / "query"),
        gallery_dir=str(tmp_path / "gallery"),
        layout="folders",
    )
    splits = read_dataset(data)
    carol_query = {s.pid for s in splits.query}
    carol_gallery = {s.pid for s in splits.gallery if "carol" in s.path}
    assert carol_query == carol_gallery
    assert {s.camid for s in splits.query} == {1} and {s.camid for s in splits.gallery} == {2}


def test_split_identity_folders_is_disjoint_and_seeded():
    samples = [Sample(f"{pid}_{i}.png", pid, -1) for pid in range(1, 11) for i in range(3)]
    train, query, gallery = split_identity_folders(samples, 0.4, seed=5)
    assert {s.pid for s in train}.isdisjoint({s.pid for s in query} | {s.pid for s in gallery})
    assert len({s.pid for s in query}) == 4 and len(query) == 4 and len(gallery) == 8
    assert split_identity_folders(samples, 0.4, seed=5) == (train, query, gallery)


def test_summary_counts():
    samples = [Sample("a", 1, 1), Sample("b", 1, 2), Sample("c", 2, 1), Sample("d", 0, 3), Sample("e", -1, 1)]
    assert summarize_split(samples) == {
        "images": 5,
        "identities": 2,
        "distractor_images": 1,
        "junk_images": 1,
        "cameras": 3,
        "single_image_identities": 1,
    }


def test_real_market_sample_counts_match_its_readme(market_sample):
    splits = read_dataset(DataConfig(root=str(market_sample)))
    counts = {name: summarize_split(getattr(splits, name)) for name in ("train", "query", "gallery")}
    assert (counts["train"]["images"], counts["train"]["identities"]) == (204, 25)
    assert (counts["query"]["images"], counts["query"]["identities"]) == (77, 25)
    assert counts["gallery"]["images"] == 147
    assert {s.pid for s in splits.gallery} == {s.pid for s in splits.query}
    assert {s.pid for s in splits.train}.isdisjoint({s.pid for s in splits.query})
    assert not splits.warnings
    # one query per identity per camera, as the README says
    pairs = [(s.pid, s.camid) for s in splits.query]
    assert len(pairs) == len(set(pairs))
    assert np.all([s.camid >= 1 for s in splits.query])


def test_records_hold_absolute_paths(tmp_path, monkeypatch, write_image):
    write_image(tmp_path / "data" / "0002_c1s1_000451_03.jpg")
    monkeypatch.chdir(tmp_path)
    [sample], _ = read_market_folder("data")
    assert sample.path == str((tmp_path / "data" / "0002_c1s1_000451_03.jpg").resolve())


def test_validation_split_holds_out_whole_identities_and_every_query_can_be_matched():
    from siamese_reid.data.splits import split_validation

    rng = np.random.default_rng(0)
    train = [
        Sample(f"{pid}_{camid}_{shot}.jpg", pid, camid)
        for pid in range(1, 21)
        for camid in sorted(rng.choice([1, 2, 3, 4], size=int(rng.integers(1, 5)), replace=False))
        for shot in range(int(rng.integers(1, 4)))
    ]
    remaining, query, gallery = split_validation(train, 0.3, seed=4)
    held_out = {s.pid for s in query} | {s.pid for s in gallery}
    assert len(held_out) == 6 and held_out.isdisjoint({s.pid for s in remaining})
    assert sorted(remaining + query + gallery) == sorted(train)  # nothing lost, nothing twice
    for sample in query:  # a match from another camera always remains in the gallery
        assert any(g.pid == sample.pid and g.camid != sample.camid for g in gallery)
    assert split_validation(train, 0.3, seed=4) == (remaining, query, gallery)
    # a folder-per-identity split (one camera): one query per identity with two images or more
    flat = [Sample(f"{pid}_{shot}.png", pid, 1) for pid in range(1, 11) for shot in range(1 + pid % 3)]
    _, flat_query, flat_gallery = split_validation(flat, 0.5, seed=0)
    assert {s.camid for s in flat_query} == {1} and {s.camid for s in flat_gallery} == {2}
    assert all(any(g.pid == q.pid for g in flat_gallery) for q in flat_query)


def test_validation_split_that_cannot_be_scored_is_refused():
    from siamese_reid.data.splits import split_validation

    one_image_per_camera = [Sample(f"{pid}_{camid}.jpg", pid, camid) for pid in range(1, 5) for camid in (1, 2)]
    with pytest.raises(ReIDError, match="validation split .* has no identity"):
        split_validation(one_image_per_camera, 0.5, seed=0)
    with pytest.raises(ReIDError, match="leaves fewer than 2"):
        split_validation(one_image_per_camera, 0.5 + 0.3, seed=0)


@pytest.mark.parametrize(("mode", "name"), [("1", "one_bit"), ("P", "palette"), ("L", "grey")])
def test_bmps_tensorflow_misreads_are_converted_and_reach_the_model_as_their_colours(tmp_path, mode, name):
    # TensorFlow misreads 1-bit BMPs (a crash in epoch 1, after the scan) and palette BMPs (grey
    # palette indices): the scan converts both, to their colours.
    from PIL import Image

    from siamese_reid.data.images import decode_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode) if mode != "P" else Image.fromarray(rgb).quantize(16)
    path = tmp_path / f"0001_c1s1_00000{len(name)}_01.bmp"
    image.save(path, format="BMP")
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)  # what the file shows
    usable, skipped = scan_samples([Sample(str(path), 1, 1)], tmp_path / "cache")
    assert not skipped and usable[0].path.endswith(".png")
    np.testing.assert_allclose(decode_image(usable[0].path, 8, 6).numpy(), expected, atol=1e-3)


def test_converted_images_are_recorded_by_absolute_paths(tmp_path, monkeypatch, write_image):
    write_image(tmp_path / "data" / "0001_c1s1_000001_01.pgm", mode="L", image_format="PPM")
    monkeypatch.chdir(tmp_path)
    usable, _ = scan_samples(read_market_folder("data")[0], "relative_cache")
    assert Path(usable[0].path).is_absolute() and Path(usable[0].path).is_file()


def test_images_nested_deeper_than_identity_folders_are_explained(tmp_path, write_image):
    # Omniglot-style alphabet/character/images: the error says how deep the images are and where
    # to point data.root
    for alphabet in ("Greek", "Latin"):
        for character in ("c1", "c2"):
            write_image(tmp_path / alphabet / character / "1.png", image_format="PNG")
    with pytest.raises(ReIDError) as caught:
        read_dataset(DataConfig(root=str(tmp_path), layout="folders"))
    message = str(caught.value)
    assert "2 folders deep" in message and "point data.root at" in message and "Greek" in message


def test_folder_datasets_keep_their_identity_names_for_the_figures(tmp_path, write_image):
    from siamese_reid.evaluation import compute_distances
    from siamese_reid.figures import plot_retrieval_examples

    for name in ("s13", "s2", "alice"):
        for shot in range(3):
            write_image(tmp_path / name / f"{shot}.png", image_format="PNG", seed=shot)
    splits = read_dataset(DataConfig(root=str(tmp_path), layout="folders", test_fraction=0.7))
    assert set(splits.identity_names.values()) == {"s13", "s2", "alice"}
    features = np.random.default_rng(0).normal(size=(len(splits.gallery), 4))
    distances = compute_distances(features[: len(splits.query)], features)
    figure = plot_retrieval_examples([0], splits.query, splits.gallery, distances, 2, splits.identity_names)
    titles = " ".join(axis.get_title() for axis in figure.axes)
    names = {splits.identity_names[s.pid] for s in splits.query}
    assert any(f"id {name}" in titles for name in names)  # "id s13", not "id 3"
