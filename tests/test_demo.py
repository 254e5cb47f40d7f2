import dataclasses
import hashlib
import json

import numpy as np
import pytest

from siamese_reid.config import DataConfig, DemoConfig
from siamese_reid.data.datasets import read_dataset
from siamese_reid.data.demo import ensure_demo_dataset, generate_demo_dataset
from siamese_reid.data.readers import summarize_split
from siamese_reid.errors import ReIDError
from siamese_reid.evaluation.baselines import colour_histogram_features
from siamese_reid.evaluation.distances import compute_distances
from siamese_reid.evaluation.ranking import evaluate_ranking

SPEC = DemoConfig(
    seed=1,
    num_train_identities=10,
    num_test_identities=20,
    num_cameras=4,
    images_per_camera=2,
    num_distractors=10,
    num_junk=3,
    image_height=64,
    image_width=32,
)


def digest(root):
    files = sorted(p for p in root.rglob("*.jpg"))
    return [(p.relative_to(root).as_posix(), hashlib.sha1(p.read_bytes()).hexdigest()) for p in files]


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    generate_demo_dataset(tmp_path / "a", SPEC)
    generate_demo_dataset(tmp_path / "b", SPEC)
    generate_demo_dataset(tmp_path / "c", dataclasses.replace(SPEC, seed=2))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_market_layout_with_cameras_distractors_and_junk(tmp_path):
    written = generate_demo_dataset(tmp_path, SPEC)
    counts = {split: len(names) for split, names in written.items()}
    splits = read_dataset(DataConfig(root=str(tmp_path)))
    assert counts == {
        "bounding_box_train": len(splits.train),
        "query": len(splits.query),
        "bounding_box_test": len(splits.gallery),
    }
    train_pids, query_pids = {s.pid for s in splits.train}, {s.pid for s in splits.query}
    assert len(train_pids) == 10 and len(query_pids) == 20 and train_pids.isdisjoint(query_pids)
    gallery = summarize_split(splits.gallery)
    assert gallery["distractor_images"] == 10 and gallery["junk_images"] == 3
    for split in (splits.train, splits.query, splits.gallery):
        assert summarize_split(split)["cameras"] >= 2
    # every query identity has a gallery image from another camera (a valid match exists)
    for query in splits.query:
        assert any(g.pid == query.pid and g.camid != query.camid for g in splits.gallery)
    pairs = [(s.pid, s.camid) for s in splits.query]
    assert len(pairs) == len(set(pairs))  # one query per identity and camera


def test_a_colour_histogram_cannot_solve_it(tmp_path):
    generate_demo_dataset(tmp_path, SPEC)
    splits = read_dataset(DataConfig(root=str(tmp_path)))
    distances = compute_distances(
        colour_histogram_features([s.path for s in splits.query]),
        colour_histogram_features([s.path for s in splits.gallery]),
    )
    result = evaluate_ranking(
        distances,
        np.array([s.pid for s in splits.query]),
        np.array([s.pid for s in splits.gallery]),
        np.array([s.camid for s in splits.query]),
        np.array([s.camid for s in splits.gallery]),
    )
    assert result.cmc[0] < 0.25 and result.mean_ap < 0.25, (result.cmc[0], result.mean_ap)


def test_ensure_regenerates_only_when_the_spec_changes(tmp_path):
    spec = dataclasses.replace(SPEC, dir=str(tmp_path / "demo"))
    assert ensure_demo_dataset(spec) is True
    assert ensure_demo_dataset(spec) is False
    (tmp_path / "demo" / "query" / "my_notes.txt").write_text("mine")
    smaller = dataclasses.replace(spec, num_test_identities=5)
    assert ensure_demo_dataset(smaller) is True
    assert len(list((tmp_path / "demo" / "query").glob("*.jpg"))) < 20 * 2  # old images are gone
    assert (tmp_path / "demo" / "query" / "my_notes.txt").read_text() == "mine"  # not ours: kept
    # a real image a user dropped in, with a Market-1501 name like the demo's own: kept too
    user_image = tmp_path / "demo" / "query" / "0001_c1s1_000001_01.jpg"
    user_image.write_bytes(b"a real photo")
    assert ensure_demo_dataset(spec) is True
    assert user_image.read_bytes() == b"a real photo"


@pytest.mark.parametrize("existing", ["user_data", "."])
def test_demo_never_deletes_a_folder_it_did_not_create(tmp_path, monkeypatch, existing):
    # `--set demo.dir=~/data` once erased the user's files, `demo.dir=.` a whole checkout.
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / existing
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "photo.jpg").write_bytes(b"precious")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(ReIDError, match="not a demo dataset folder"):
        ensure_demo_dataset(dataclasses.replace(SPEC, dir=existing))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (folder / "photo.jpg").read_bytes() == b"precious"


def test_an_interrupted_demo_generation_is_finished_next_time(tmp_path):
    spec = dataclasses.replace(SPEC, dir=str(tmp_path / "demo"))
    assert ensure_demo_dataset(spec) is True
    marker = tmp_path / "demo" / "demo_spec.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "complete": False}))
    next((tmp_path / "demo" / "query").glob("*.jpg")).unlink()  # as if killed mid-way
    assert ensure_demo_dataset(spec) is True
    generate_demo_dataset(tmp_path / "fresh", SPEC)
    assert digest(tmp_path / "demo") == digest(tmp_path / "fresh")
