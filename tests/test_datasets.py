"""read_dataset over every layout (MSMT17, CUHK03-NP) and several datasets in one training
run, on tiny trees in each release's exact layout. Expected records are written out from what
each fixture put on disk, not derived with the readers' own code."""

import json

import pytest

from siamese_reid.config import DataConfig, ExtraTrainingSet, load_config
from siamese_reid.data.datasets import read_dataset, read_extra_training
from siamese_reid.data.splits import contiguous_labels
from siamese_reid.errors import ReIDError

# (listed identity, camera) of each image, per list file; val holds more images of the
# training identities, as in the release.
MSMT17_SPEC = {
    "list_train.txt": [(0, 1), (0, 2), (1, 3), (1, 15), (2, 7), (2, 7)],
    "list_val.txt": [(0, 4), (2, 9)],
    "list_query.txt": [(0, 2), (1, 5)],
    "list_gallery.txt": [(0, 1), (0, 11), (1, 6), (1, 5), (2, 8)],
}
MSMT17_FOLDERS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


@pytest.fixture
def write_msmt17(write_image):
    """A function (release folder, version) that writes an MSMT17 release folder: images in
    <image folder>/<identity>/ and the four lists.

    The function returns {list file name: [(absolute path, listed identity, camera)]}, in list order.
    """

    def write(release, version):
        train_folder, test_folder = MSMT17_FOLDERS[version]
        written = {}
        for list_name, entries in MSMT17_SPEC.items():
            folder = train_folder if list_name in ("list_train.txt", "list_val.txt") else test_folder
            lines, written[list_name] = [], []
            for index, (pid, camid) in enumerate(entries):
                # the real name: identity_index_camera_date+time_frame_n, e.g. 0000_000_01_0303morning_0008_0.jpg
                frame = f"{len(lines) + 8:04d}_{index % 3}"
                relative = f"{pid:04d}/{pid:04d}_{index:03d}_{camid:02d}_0303morning_{frame}.jpg"
                if list_name == "list_val.txt":
                    relative = relative.replace("morning", "noon")  # other files of the same people
                write_image(release / folder / relative, seed=index)
                lines.append(f"{relative} {pid}\n")
                written[list_name].append((str((release / folder / relative).resolve()), pid, camid))
            (release / list_name).write_text("".join(lines))
        return written

    return write


def records(samples):
    return sorted((s.path, s.pid, s.camid) for s in samples)


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
@pytest.mark.parametrize("root_is", ["release", "parent", "nested"])
def test_msmt17_split_identities_and_cameras_come_from_the_lists_and_names(tmp_path, version, root_is, write_msmt17):
    parent = tmp_path / "msmt"
    release = {"release": parent / version, "parent": parent / version, "nested": parent / version / version}[root_is]
    written = write_msmt17(release, version)
    root = {"release": release, "parent": parent, "nested": parent / version}[root_is]
    splits = read_dataset(DataConfig(root=str(root), layout="msmt17"))
    # listed identities start at 0 (our distractor number): training k -> k + 1; the test lists
    # restart at 0, so their people come after the 3 training identities: k -> k + 4
    assert records(splits.train) == sorted((p, pid + 1, cam) for p, pid, cam in written["list_train.txt"])
    assert records(splits.query) == sorted((p, pid + 4, cam) for p, pid, cam in written["list_query.txt"])
    assert records(splits.gallery) == sorted((p, pid + 4, cam) for p, pid, cam in written["list_gallery.txt"])
    assert (len(splits.train), len(splits.query), len(splits.gallery)) == (6, 2, 5)
    assert {s.camid for s in splits.train} == {1, 2, 3, 7, 15}
    assert not splits.warnings
    train_folder, test_folder = MSMT17_FOLDERS[version]
    assert splits.identity_names[1] == f"{train_folder}/0000" and splits.identity_names[6] == f"{test_folder}/0002"


def test_msmt17_val_images_join_training_only_when_asked(tmp_path, write_msmt17):
    written = write_msmt17(tmp_path / "MSMT17_V1", "MSMT17_V1")
    val_paths = {p for p, _, _ in written["list_val.txt"]}
    default = read_dataset(DataConfig(root=str(tmp_path), layout="msmt17"))
    assert val_paths.isdisjoint(s.path for s in default.train) and len(default.train) == 6
    joined = read_dataset(DataConfig(root=str(tmp_path), layout="msmt17", msmt17_val="train"))
    expected = sorted((p, pid + 1, cam) for name in ("list_train.txt", "list_val.txt") for p, pid, cam in written[name])
    assert records(joined.train) == expected
    assert {s.pid for s in joined.train} == {s.pid for s in default.train}  # the same people, more images
    assert records(joined.query) == records(default.query)  # test numbering unchanged


@pytest.mark.parametrize("missing", ["list_train.txt", "list_query.txt", "list_gallery.txt"])
def test_msmt17_missing_list_file_is_named(tmp_path, missing, write_msmt17):
    write_msmt17(tmp_path / "MSMT17_V2", "MSMT17_V2")
    (tmp_path / "MSMT17_V2" / missing).unlink()
    with pytest.raises(ReIDError, match=f"list file '.*{missing}' is missing"):
        read_dataset(DataConfig(root=str(tmp_path), layout="msmt17"))


def test_msmt17_val_list_is_needed_only_to_train_on_it(tmp_path, write_msmt17):
    write_msmt17(tmp_path / "MSMT17_V1", "MSMT17_V1")
    (tmp_path / "MSMT17_V1" / "list_val.txt").unlink()
    assert len(read_dataset(DataConfig(root=str(tmp_path), layout="msmt17")).train) == 6
    with pytest.raises(ReIDError, match="list_val.txt' is missing"):
        read_dataset(DataConfig(root=str(tmp_path), layout="msmt17", msmt17_val="train"))


@pytest.mark.parametrize(
    "bad_line",
    [
        "0001/0001_002_01_0303morning_0010_1.jpg",  # no identity
        "0001/0001_002_01_0303morning_0010_1.jpg one",  # identity not a number
        "0001/0001_002_0303morning.jpg 1",  # no camera field
        "0001/0001_002_01_0303morning_0010_1.jpg 1 extra",
    ],
)
def test_msmt17_malformed_line_names_file_and_line(tmp_path, bad_line, write_msmt17):
    write_msmt17(tmp_path / "MSMT17_V1", "MSMT17_V1")
    list_path = tmp_path / "MSMT17_V1" / "list_gallery.txt"
    lines = list_path.read_text().splitlines(keepends=True)
    list_path.write_text("".join(lines[:2] + [bad_line + "\n"] + lines[2:]))
    with pytest.raises(ReIDError) as caught:
        read_dataset(DataConfig(root=str(tmp_path), layout="msmt17"))
    assert f"{list_path.resolve()}, line 3: expected" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_msmt17_missing_images_are_skipped_and_a_wrong_root_is_explained(tmp_path, write_msmt17):
    written = write_msmt17(tmp_path / "MSMT17_V2", "MSMT17_V2")
    gone = written["list_gallery.txt"][1][0]
    (tmp_path / gone).unlink()
    splits = read_dataset(DataConfig(root=str(tmp_path), layout="msmt17"))
    assert len(splits.gallery) == 4 and gone not in {s.path for s in splits.gallery}
    assert splits.warnings == [f"skipped '{gone}': listed in list_gallery.txt line 2 but missing"]
    # no listed file at all: the lists belong to another folder
    for path, _, _ in written["list_query.txt"]:
        (tmp_path / path).unlink()
    with pytest.raises(ReIDError, match="list_query.txt, line 1 names .* which does not exist, nor does any other"):
        read_dataset(DataConfig(root=str(tmp_path), layout="msmt17"))


def test_msmt17_folder_not_found_or_ambiguous(tmp_path, write_msmt17):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReIDError) as caught:
        read_dataset(DataConfig(root=str(tmp_path / "empty"), layout="msmt17"))
    message = str(caught.value)
    for expected in ("MSMT17_V1/ (train/, test/)", "MSMT17_V2/ (mask_train_v2/, mask_test_v2/)", "list_val.txt"):
        assert expected in message
    write_msmt17(tmp_path / "both" / "MSMT17_V1", "MSMT17_V1")
    write_msmt17(tmp_path / "both" / "MSMT17_V2", "MSMT17_V2")
    with pytest.raises(ReIDError, match="holds both MSMT17_V1/ and MSMT17_V2/"):
        read_dataset(DataConfig(root=str(tmp_path / "both"), layout="msmt17"))
    (tmp_path / "MSMT17_V2" / "mask_train_v2").mkdir(parents=True)
    with pytest.raises(ReIDError, match="MSMT17_V2 image folder '.*mask_test_v2' is missing"):
        read_dataset(DataConfig(root=str(tmp_path / "MSMT17_V2"), layout="msmt17"))
    with pytest.raises(ReIDError, match="cannot be used with data.layout msmt17"):
        read_dataset(DataConfig(root=str(tmp_path), query_dir=str(tmp_path), layout="msmt17"))


def test_market_layout_on_msmt17_says_which_layout_to_use(tmp_path, write_msmt17):
    write_msmt17(tmp_path / "MSMT17_V2", "MSMT17_V2")
    with pytest.raises(ReIDError, match="looks like data.layout msmt17: set data.layout=msmt17"):
        read_dataset(DataConfig(root=str(tmp_path / "MSMT17_V2")))


# CUHK03-NP: (identity, camera, image number) per folder; labeled has one more training image
# than detected so the subsets can be told apart.
CUHK03_SPEC = {
    "bounding_box_train": [(1, 1, 1), (1, 2, 6), (2, 1, 11), (2, 2, 15)],
    "query": [(3, 1, 22), (3, 2, 27)],
    "bounding_box_test": [(3, 1, 21), (3, 2, 28), (5, 1, 41), (5, 2, 45)],
}


@pytest.fixture
def write_cuhk03_np(write_image):
    """A function (root) that writes
    root/{detected,labeled}/{bounding_box_train,query,bounding_box_test}/0001_c1_1.png and returns
    {(subset, folder): [(absolute path, identity, camera)]}."""

    def write(root):
        written = {}
        for subset in ("detected", "labeled"):
            for folder, entries in CUHK03_SPEC.items():
                entries = entries + ([(2, 1, 12)] if subset == "labeled" and folder == "bounding_box_train" else [])
                for pid, camid, number in entries:
                    path = root / subset / folder / f"{pid:04d}_c{camid}_{number}.png"
                    write_image(path, seed=number, image_format="PNG")
                    written.setdefault((subset, folder), []).append((str(path.resolve()), pid, camid))
        return written

    return write


@pytest.mark.parametrize("subset", ["detected", "labeled"])
@pytest.mark.parametrize("root_at_subset", [False, True])
def test_cuhk03_np_reads_the_chosen_subset(tmp_path, subset, root_at_subset, write_cuhk03_np):
    written = write_cuhk03_np(tmp_path / "cuhk03-np")
    root = tmp_path / "cuhk03-np" / subset if root_at_subset else tmp_path / "cuhk03-np"
    splits = read_dataset(DataConfig(root=str(root), layout="cuhk03_np", cuhk03_subset=subset))
    assert records(splits.train) == sorted(written[(subset, "bounding_box_train")])
    assert records(splits.query) == sorted(written[(subset, "query")])
    assert records(splits.gallery) == sorted(written[(subset, "bounding_box_test")])
    assert len(splits.train) == {"detected": 4, "labeled": 5}[subset]
    assert {s.camid for s in splits.gallery} == {1, 2}


def test_cuhk03_np_refuses_the_other_subsets_folder_and_explains_a_wrong_root(tmp_path, write_cuhk03_np):
    write_cuhk03_np(tmp_path / "cuhk03-np")
    with pytest.raises(ReIDError, match="is CUHK03-NP's labeled subset but data.cuhk03_subset is detected"):
        read_dataset(DataConfig(root=str(tmp_path / "cuhk03-np" / "labeled"), layout="cuhk03_np"))
    with pytest.raises(ReIDError, match="holds neither detected/ nor bounding_box_train"):
        read_dataset(DataConfig(root=str(tmp_path), layout="cuhk03_np"))
    (tmp_path / "only-labeled").mkdir()
    (tmp_path / "cuhk03-np" / "labeled").rename(tmp_path / "only-labeled" / "labeled")
    with pytest.raises(ReIDError, match=r"it has labeled/: set data.cuhk03_subset=labeled"):
        read_dataset(DataConfig(root=str(tmp_path / "only-labeled"), layout="cuhk03_np"))
    with pytest.raises(ReIDError, match="layout cuhk03_np needs data.root"):
        read_dataset(DataConfig(layout="cuhk03_np"))


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


def test_prepare_data_on_an_msmt17_tree(tmp_path, write_msmt17):
    from siamese_reid.data.preparation import check_dataset, prepare_data

    write_msmt17(tmp_path / "MSMT17_V2" / "MSMT17_V2", "MSMT17_V2")  # nested, as the archive unpacks
    config = load_config(None, ["data.layout=msmt17", f"data.root={tmp_path / 'MSMT17_V2'}"])
    config = check_dataset(config)
    (tmp_path / "run").mkdir()
    _, data = prepare_data(config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "dataset_summary.json").read_text())
    assert {name: (counts["images"], counts["identities"], counts["cameras"]) for name, counts in summary.items()} == {
        "train": (6, 3, 5),
        "query": (2, 2, 2),
        "gallery": (5, 3, 5),
    }
    names = json.loads((tmp_path / "run" / "identity_names.json").read_text())
    assert names["4"] == "mask_test_v2/0000" and names["1"] == "mask_train_v2/0000"
    assert {s.pid for s in data.query} == {4, 5}


def test_asking_for_a_benchmark_without_its_folder_does_not_train_on_the_demo():
    from siamese_reid.data.preparation import resolve_dataset

    with pytest.raises(ReIDError, match="data.layout msmt17 needs data.root"):
        resolve_dataset(load_config(None, ["data.layout=msmt17"]))
