"""Several datasets in one training run (read_extra_training, prepare_data), on tiny trees in
each release's exact layout. Expected records are written out from what each fixture put on
disk, not derived with the readers' own code. Each layout alone: test_readers (Market-1501,
folders), test_msmt17, test_cuhk03."""

import json

import pytest

from siamese_reid.config import DataConfig, ExtraTrainingSet, load_config
from siamese_reid.data.datasets import read_dataset, read_extra_training
from siamese_reid.data.splits import contiguous_labels
from siamese_reid.errors import ReIDError


def records(samples):
    return sorted((s.path, s.pid, s.camid) for s in samples)


@pytest.fixture
def write_market(write_image):
    """A function (root, train, query, gallery) that writes a Market-1501 tree from
    (identity, camera) lists."""

    def write(root, train, query, gallery):
        for folder, entries in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
            for index, (pid, camid) in enumerate(entries):
                write_image(root / folder / f"{pid:04d}_c{camid}s1_{index:06d}_01.jpg", seed=index)

    return write


@pytest.fixture
def three_datasets(tmp_path, write_msmt17, write_market):
    """Market-style main (train people 1, 2; test 3, 4; cameras 1..3), a second Market-style
    dataset using the same numbers 1, 2 for other people (and a junk box), and an MSMT17."""
    main, other = tmp_path / "main", tmp_path / "other"
    write_market(main, [(1, 1), (1, 2), (2, 1), (2, 3)], [(3, 1), (4, 2)], [(3, 2), (4, 1), (0, 3)])
    write_market(other, [(1, 1), (1, 2), (2, 2), (2, 2), (-1, 1)], [(7, 1)], [(7, 2)])
    write_msmt17(tmp_path / "MSMT17_V1", "MSMT17_V1")
    return main, other, tmp_path / "MSMT17_V1"


def test_extra_training_sets_keep_identities_and_cameras_apart(three_datasets):
    main, other, msmt = three_datasets
    extra_train = (ExtraTrainingSet(str(other)), ExtraTrainingSet(str(msmt), "msmt17"))
    data = DataConfig(root=str(main), extra_train=extra_train)
    main_splits = read_dataset(data)
    other_set, msmt_set = read_extra_training(data, main_splits)
    # main uses identities up to 4 and cameras up to 3: "other" moves above them (junk stays -1)
    assert sorted((s.pid, s.camid) for s in other_set.samples) == [(-1, 4), (5, 4), (5, 5), (6, 5), (6, 5)]
    # other's test identity 7 was not read for training: MSMT17 (training 1..3, cameras 1..15)
    # moves above 6 and 5
    assert sorted({s.pid for s in msmt_set.samples}) == [7, 8, 9]
    assert sorted({s.camid for s in msmt_set.samples}) == [6, 7, 8, 12, 20]
    assert (other_set.name, msmt_set.name) == ("other", "MSMT17_V1")
    assert (len(other_set.samples), len(msmt_set.samples)) == (5, 6)
    people = [s for s in main_splits.train + other_set.samples + msmt_set.samples if s.pid > 0]
    labels, pids = contiguous_labels([s.pid for s in people])
    assert len(pids) == 2 + 2 + 3  # seven people: no two datasets' person 1 merged


def test_a_dataset_listed_twice_or_the_main_one_is_refused(three_datasets):
    main, other, _ = three_datasets
    twice = DataConfig(root=str(main), extra_train=(ExtraTrainingSet(str(other)), ExtraTrainingSet(str(other))))
    with pytest.raises(ReIDError, match=r"data.extra_train\[1\] .* holds images already read"):
        read_extra_training(twice, read_dataset(twice))
    itself = DataConfig(root=str(main), extra_train=(ExtraTrainingSet(str(main)),))
    with pytest.raises(ReIDError, match=r"data.extra_train\[0\] .* holds images already read"):
        read_extra_training(itself, read_dataset(itself))
    missing = DataConfig(root=str(main), extra_train=(ExtraTrainingSet(str(main / "nope"), "msmt17"),))
    with pytest.raises(ReIDError, match=r"^data.extra_train\[0\]: data.root '.*nope' does not exist"):
        read_extra_training(missing, read_dataset(missing))


def test_a_folder_per_identity_extra_dataset_trains_on_all_its_identities(three_datasets, tmp_path, write_image):
    main, _, _ = three_datasets
    for name in ("alice", "bob", "carol"):
        for shot in range(2):
            write_image(tmp_path / "people" / name / f"{shot}.png", image_format="PNG", seed=shot)
    data = DataConfig(root=str(main), extra_train=(ExtraTrainingSet(str(tmp_path / "people"), "folders"),))
    [people] = read_extra_training(data, read_dataset(data))
    assert sorted((s.pid, s.camid) for s in people.samples) == [(5, 4), (5, 4), (6, 4), (6, 4), (7, 4), (7, 4)]


def test_prepare_data_trains_on_every_dataset_and_counts_each(three_datasets, tmp_path):
    from siamese_reid.data.preparation import check_dataset, prepare_data

    main, other, msmt = three_datasets
    extra = f"[{{root: {other}, layout: market}}, {{root: {msmt}, layout: msmt17}}]"
    config = load_config(None, [f"data.root={main}", f"data.extra_train={extra}"])
    assert check_dataset(config) == config
    (tmp_path / "run").mkdir()
    _, data = prepare_data(config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "dataset_summary.json").read_text())
    assert list(summary) == ["train", "train: main", "train: other", "train: MSMT17_V1", "query", "gallery"]
    assert [summary[name]["images"] for name in ("train", "train: main", "train: other", "train: MSMT17_V1")] == [
        14,
        4,
        4,  # its junk box is not trained on
        6,
    ]
    assert [summary[name]["identities"] for name in ("train", "train: main", "train: other", "train: MSMT17_V1")] == [
        7,
        2,
        2,
        3,
    ]
    assert summary["train"]["cameras"] == 3 + 2 + 5
    assert len(data.train) == 14 and records(data.query) == records(read_dataset(config.data).query)
    assert "1 junk (identity -1)" in (tmp_path / "run" / "data_warnings.txt").read_text()


def test_datasets_in_folders_of_the_same_name_are_all_trained_and_counted(tmp_path, write_market):
    from siamese_reid.data.preparation import prepare_data

    write_market(tmp_path / "a" / "data", [(1, 1), (1, 2), (2, 1)], [(3, 1)], [(3, 2)])
    write_market(tmp_path / "b" / "data", [(1, 1), (2, 2), (2, 1)], [(4, 1)], [(4, 2)])
    config = load_config(
        None, [f"data.root={tmp_path / 'a' / 'data'}", f"data.extra_train=[{{root: {tmp_path / 'b' / 'data'}}}]"]
    )
    (tmp_path / "run").mkdir()
    _, data = prepare_data(config, tmp_path / "run")
    assert len(data.train) == 6 and len({s.pid for s in data.train}) == 4
    assert {name: counts["images"] for name, counts in data.summary.items() if name.startswith("train")} == {
        "train": 6,
        "train: data": 3,
        "train: data (2)": 3,
    }
