"""read_dataset on MSMT17 (V1 and V2) trees in the release's exact layout. Expected records are
written out from what the fixture put on disk, not derived with the reader's own code."""

import json

import pytest

from siamese_reid.config import DataConfig, load_config
from siamese_reid.data.datasets import read_dataset
from siamese_reid.errors import ReIDError


def records(samples):
    return sorted((s.path, s.pid, s.camid) for s in samples)


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
@pytest.mark.parametrize("root_is", ["release", "parent", "nested"])
def test_msmt17_split_identities_and_cameras_come_from_the_lists_and_names(
    tmp_path, version, root_is, write_msmt17, msmt17_folders
):
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
    train_folder, test_folder = msmt17_folders[version]
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
