"""read_dataset on CUHK03-NP trees (detected and labeled) in the release's exact layout.
Expected records are written out from what the fixture put on disk, not derived with the
reader's own code."""

import pytest

from siamese_reid.config import DataConfig
from siamese_reid.data.datasets import read_dataset
from siamese_reid.errors import ReIDError


def records(samples):
    return sorted((s.path, s.pid, s.camid) for s in samples)


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
