"""Export, gallery index and search, on a small trained run, as a user runs them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siamese_reid import experiment
from siamese_reid.config import load_config
from siamese_reid.errors import ReIDError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SETTINGS = [
    "data.image_height=32",
    "data.image_width=32",
    "model.vgg_blocks=2",
    "model.embedding_dim=16",
    "training.epochs=1",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
    "evaluation.num_examples=0",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_demo):
    config = load_config(PROJECT_ROOT / "config.yaml", SETTINGS + [f"data.root={tiny_demo}", "output.run_name=small"])
    _, run_dir = experiment.train(config, tmp_path_factory.mktemp("runs"))
    return run_dir


@pytest.fixture(scope="module")
def query_folder(tiny_demo, market_sample_folder):
    """Real people's query images where the Market-1501 sample is on this machine, else the demo's."""
    return market_sample_folder / "query" if market_sample_folder.is_dir() else tiny_demo / "query"


def real_images(query_folder, count=6):
    return sorted(query_folder.glob("*.jpg"))[:count]


def run_without_the_package(script, cwd):
    """Runs `script` in a new Python process where `import siamese_reid` fails."""
    blocked = "import sys; sys.modules['siamese_reid'] = None  # as if the package were not installed\n"
    return subprocess.run(
        [sys.executable, "-c", blocked + script], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def command(script, *args):
    return subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )


def test_training_writes_the_calibrated_threshold(trained_run):
    record = json.loads((trained_run / "threshold.json").read_text())
    assert record["split"] == "query/gallery" and record["target_false_accept_rate"] == 0.01
    assert record["false_accept_rate"] <= 0.01
    assert record["num_positive_pairs"] > 0 and record["num_negative_pairs"] > 0
    assert 0 <= record["equal_error_rate"] <= 1 and (trained_run / "threshold.png").stat().st_size > 1000


def test_threshold_is_the_largest_one_within_the_false_accept_budget():
    from siamese_reid.evaluation.threshold import fit_threshold

    rng = np.random.default_rng(3)
    positive, negative = rng.normal(0.6, 0.15, 300), rng.normal(1.1, 0.15, 3000)
    threshold = fit_threshold(positive, negative, target_false_accept_rate=0.02)
    # brute force over every distinct distance: accept pairs strictly closer than the threshold
    within = [t for t in np.unique(np.concatenate([positive, negative])) if np.mean(negative < t) <= 0.02]
    assert threshold.value == pytest.approx(max(within))
    assert threshold.false_accept_rate == pytest.approx(np.mean(negative < threshold.value))
    assert threshold.true_accept_rate == pytest.approx(np.mean(positive < threshold.value))


def test_savedmodel_export_matches_the_keras_tower_without_the_package(trained_run, tmp_path, query_folder):
    import keras

    from siamese_reid.data.images import decode_image

    result = command("export.py", "--run", trained_run)
    assert result.returncode == 0, result.stderr[-2000:]
    export_dir = trained_run / "export" / "savedmodel"
    images = np.stack([decode_image(str(path), 32, 32).numpy() for path in real_images(query_folder)])
    np.save(tmp_path / "images.npy", images)
    # the files at their own size: the signature resizes them as the training pipeline does
    original = tuple(np.asarray(__import__("PIL.Image").Image.open(real_images(query_folder)[0])).shape[:2])
    np.save(
        tmp_path / "originals.npy",
        np.stack([decode_image(str(p), *original).numpy() for p in real_images(query_folder)]),
    )
    tower = keras.saving.load_model(trained_run / "last.keras")
    np.save(tmp_path / "expected.npy", tower.predict(images, verbose=0))
    script = (
        "import numpy as np, tensorflow as tf\n"
        f"model = tf.saved_model.load({str(export_dir)!r})\n"
        "serve = model.signatures['serving_default']\n"
        f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
        "out = serve(images=tf.constant(images))['embeddings'].numpy()\n"
        f"np.testing.assert_allclose(out, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5)\n"
        "np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)\n"
        "assert serve(images=tf.constant(images[:1]))['embeddings'].shape == (1, 16)  # any batch size\n"
        f"originals = serve(images=tf.constant(np.load({str(tmp_path / 'originals.npy')!r})))['embeddings'].numpy()\n"
        f"np.testing.assert_allclose(originals, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5)\n"
        "print('ok')\n"
    )
    loaded = run_without_the_package(script, tmp_path)
    assert loaded.returncode == 0 and "ok" in loaded.stdout, loaded.stderr[-2000:]
    again = command("export.py", "--run", trained_run)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten


def test_litert_and_onnx_exports_match_the_keras_tower(trained_run, tmp_path, litert_embeddings, query_folder):
    import keras

    from siamese_reid.data.images import decode_image
    from siamese_reid.export import export_model

    tower = keras.saving.load_model(trained_run / "last.keras")
    images = np.stack([decode_image(str(path), 32, 32).numpy() for path in real_images(query_folder)])
    expected = tower.predict(images, verbose=0)
    export_model(tower, "litert", tmp_path / "litert")
    got = litert_embeddings(tmp_path / "litert" / "model.tflite", images)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    export_model(tower, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["images"]
    np.testing.assert_allclose(session.run(None, {"images": images})[0], expected, atol=1e-5)


def test_index_is_incremental_and_survives_a_crash(trained_run, tiny_demo, tmp_path, monkeypatch, write_image):
    from siamese_reid.search import indexing, load_index, update_index

    photos = tmp_path / "photos"
    shutil.copytree(tiny_demo / "query", photos / "nested" / "query")
    total = len(list(photos.rglob("*.jpg")))
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    index_dir = tmp_path / "index"
    first = update_index(trained_run, [photos], index_dir, batch_images=4)
    assert first.line() == f"indexed: {total} added, 0 updated, 0 removed, 0 unchanged"
    assert [path for path, _ in first.skipped] == [str((photos / "broken.jpg").resolve())]
    index = load_index(index_dir)
    assert len(index.entries) == total and index.features.shape == (total, 16)
    assert all(entry.pid is not None and entry.camid is not None for entry in index.entries)  # Market names
    # change one file, remove one, add one
    images = sorted(photos.rglob("0*.jpg"))
    write_image(images[0], size=(64, 32), seed=9)
    images[1].unlink()
    write_image(photos / "new_person.png", size=(64, 32), seed=10, image_format="PNG")
    second = update_index(trained_run, [photos], index_dir, batch_images=4)
    assert second.line() == f"indexed: 1 added, 1 updated, 1 removed, {total - 2} unchanged"
    index = load_index(index_dir)
    assert len(index.entries) == total and len({entry.path for entry in index.entries}) == total
    unknown = [entry for entry in index.entries if entry.path.endswith("new_person.png")]
    assert unknown[0].pid is None and unknown[0].camid is None
    # a crash in the middle keeps every finished batch, and the index stays readable
    for path in sorted((photos / "nested").rglob("*.jpg"))[:10]:
        write_image(path, size=(64, 32), seed=11)
    calls = []
    real_embed = indexing._embed

    def crash_on_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_embed(*args)

    monkeypatch.setattr(indexing, "_embed", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        update_index(trained_run, [photos], index_dir, batch_images=4)
    monkeypatch.setattr(indexing, "_embed", real_embed)
    kept = load_index(index_dir)
    assert len(kept.entries) == total - 10 + 4
    resumed = update_index(trained_run, [photos], index_dir, batch_images=4)
    # the interrupted run had already dropped the stale rows of the changed files: they come back as added
    assert resumed.line() == f"indexed: 6 added, 0 updated, 0 removed, {total - 6} unchanged"


def test_index_refuses_another_model_and_folders_that_are_not_indexes(trained_run, tiny_demo, tmp_path):
    import keras

    from siamese_reid.search import Searcher, update_index

    update_index(trained_run, [tiny_demo / "query"], tmp_path / "index")
    other_run = tmp_path / "other_run"
    shutil.copytree(trained_run, other_run, ignore=shutil.ignore_patterns("export", "evaluations"))
    update_index(other_run, [tiny_demo / "query"], tmp_path / "other_index")
    tower = keras.saving.load_model(other_run / "last.keras")
    tower.set_weights([w * 1.01 for w in tower.get_weights()])
    tower.save(other_run / "last.keras")  # a retrained model over the same file
    with pytest.raises(ReIDError, match="built by another model"):
        update_index(other_run, [tiny_demo / "query"], tmp_path / "index")
    with pytest.raises(ReIDError, match="has changed since index .* was built"):
        Searcher(tmp_path / "other_index")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    with pytest.raises(ReIDError, match="not a siamese-reid index"):
        update_index(trained_run, [tiny_demo / "query"], tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "mine"


def test_query_command_line(trained_run, tiny_demo, tmp_path, query_folder):
    from siamese_reid.search import load_index

    index_dir = tmp_path / "index"
    assert (
        command(
            "search.py",
            "index",
            "--run",
            trained_run,
            "--images",
            tiny_demo / "bounding_box_test",
            "--index",
            index_dir,
        ).returncode
        == 0
    )
    queries = real_images(query_folder, 2)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    result = command("search.py", "query", "--index", index_dir, "--top-k", "5", "--json", *queries, broken)
    assert result.returncode == 1  # one image failed; the others are answered
    assert f"cannot read image '{broken}'" in result.stderr
    answers = json.loads(result.stdout)
    assert [answer["query"] for answer in answers] == [str(q) for q in queries]
    threshold = json.loads((trained_run / "threshold.json").read_text())["value"]
    index = load_index(index_dir)
    from siamese_reid.data.images import decode_image
    from siamese_reid.evaluation import extract_embeddings
    from siamese_reid.model import load_embedding_model

    tower = load_embedding_model(trained_run / "last.keras")
    query_features = extract_embeddings(tower, [str(q) for q in queries], (32, 32), flip_test=True)
    del decode_image
    for answer, features in zip(answers, query_features, strict=True):
        assert set(answer) == {"query", "query_pid", "results", "match", "threshold"}
        assert answer["query_pid"] == int(Path(answer["query"]).name.split("_")[0])  # a Market-1501 name
        assert answer["threshold"] == pytest.approx(threshold)
        distances = [r["distance"] for r in answer["results"]]
        assert len(distances) == 5 and distances == sorted(distances)
        brute = np.sort(np.linalg.norm(index.features - features, axis=1))[:5]  # exact search
        np.testing.assert_allclose(distances, brute, atol=1e-4)
        assert answer["match"] == (distances[0] < threshold)
        assert all(set(r) == {"path", "distance", "pid", "camid"} for r in answer["results"])
    forced = command(
        "search.py",
        "query",
        "--index",
        index_dir,
        "--json",
        "--threshold",
        "0",
        "--save",
        tmp_path / "answers.png",
        queries[0],
    )
    assert forced.returncode == 0 and json.loads(forced.stdout)[0]["match"] is False
    assert (tmp_path / "answers.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["index", "--images", "{empty}", "--index", "{tmp}/i"], "no image files under"),
        (["index", "--images", "{tmp}/missing", "--index", "{tmp}/i"], "does not exist"),
        (["query", "--index", "{tmp}", "{image}"], "is not a siamese-reid index"),
        (["query", "--index", "{tmp}/i", "--top-k", "0", "{image}"], "--top-k must be at least 1"),
        (["index", "--run", "{tmp}", "--images", "{empty}", "--index", "{tmp}/i"], "not a training run folder"),
        (
            ["index", "--run", "{modelless}", "--images", "{images}", "--index", "{tmp}/i"],
            "no last.keras in run folder",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(trained_run, tiny_demo, tmp_path, arguments, message, query_folder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "modelless").mkdir()
    shutil.copy(trained_run / "config.yaml", tmp_path / "modelless" / "config.yaml")  # a run without a model
    values = {
        "empty": tmp_path / "empty",
        "tmp": tmp_path,
        "image": real_images(query_folder, 1)[0],
        "modelless": tmp_path / "modelless",
        "images": tiny_demo / "query",
    }
    arguments = [a.format(**values) for a in arguments]
    if arguments[0] == "index" and "--run" not in arguments:
        arguments[1:1] = ["--run", str(trained_run)]
    result = command("search.py", *arguments)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "i").exists()  # a failed command leaves no index folder behind


def test_a_runs_saved_tower_loads_with_plain_keras_in_a_fresh_process(trained_run, tmp_path):
    # the README's line, on a real run's file: no compile state, no package import needed
    script = (
        "import keras, numpy as np\n"
        f"model = keras.saving.load_model({str(trained_run / 'last.keras')!r})\n"
        "out = model.predict(np.full((2, 32, 32, 3), 128.0, 'float32'), verbose=0)\n"
        "assert out.shape == (2, 16) and getattr(model, 'optimizer', None) is None\n"
        "print('ok')\n"
    )
    result = run_without_the_package(script, tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    assert (trained_run / "last.keras").stat().st_size < 0.6 * 4 * 3 * sum(  # no Adam slots (2 per weight)
        int(np.prod(w.shape)) for w in __import__("keras").saving.load_model(trained_run / "last.keras").weights
    )


def test_index_inside_its_folder_modes_and_checkpoints(trained_run, tiny_demo, tmp_path, query_folder, write_image):
    from siamese_reid.search import Searcher, load_index, update_index

    photos = tmp_path / "photos"
    shutil.copytree(tiny_demo / "query", photos)
    write_image(photos / "scan.pgm", mode="L", image_format="PPM")  # converted into the index folder
    count = len(list(photos.iterdir()))
    index_dir = photos / "index"  # the index lives inside the folder it indexes
    update_index(trained_run, [photos, photos], index_dir)  # the same folder twice
    again = update_index(trained_run, [photos], index_dir)
    assert again.line() == f"indexed: 0 added, 0 updated, 0 removed, {count} unchanged"
    assert len(load_index(index_dir)) == count  # no converted copies, no duplicates
    # an edited file that needs conversion is converted (and embedded) again
    write_image(photos / "scan.pgm", mode="L", image_format="PPM", seed=5, size=(20, 10))
    assert update_index(trained_run, [photos], index_dir).line().startswith("indexed: 0 added, 1 updated")
    with pytest.raises(ReIDError, match=r"without identities from folder names \(identity_from_folder=False\)"):
        update_index(trained_run, [photos], index_dir, identity_from_folder=True)
    update_index(trained_run, [tiny_demo / "query"], tmp_path / "best_index", checkpoint="best")
    with pytest.raises(ReIDError, match="fitted for last.keras .* give threshold$"):  # the argument, not the flag
        Searcher(tmp_path / "best_index")
    result = command("search.py", "query", "--index", tmp_path / "best_index", real_images(query_folder, 1)[0])
    assert result.returncode == 2 and result.stderr.strip().endswith("give --threshold"), result.stderr
    assert Searcher(tmp_path / "best_index", threshold=0.5).threshold == 0.5


# ---------------------------------------------------------------------------------------------
# An index remembers its folders


def two_galleries(tiny_demo, tmp_path):
    """Two folders of Market-named images, g1 and g2, and their image counts."""
    g1, g2 = tmp_path / "g1", tmp_path / "g2"
    shutil.copytree(tiny_demo / "bounding_box_test", g1)
    shutil.copytree(tiny_demo / "query", g2)
    return g1, g2, len(list(g1.glob("*.jpg"))), len(list(g2.glob("*.jpg")))


def indexed_paths(index_dir):
    from siamese_reid.search import load_index

    return sorted(entry.path for entry in load_index(index_dir).entries)


def images_under(*folders):
    return sorted(str(path.resolve()) for folder in folders for path in Path(folder).rglob("*.jpg"))


def test_a_second_folder_joins_the_index_and_a_refresh_covers_every_folder(
    trained_run, tiny_demo, tmp_path, write_image
):
    from siamese_reid.search import update_index

    g1, g2, count1, count2 = two_galleries(tiny_demo, tmp_path)
    index_dir = tmp_path / "index"
    first = update_index(trained_run, [g1], index_dir)
    assert first.line() == f"indexed: {count1} added, 0 updated, 0 removed, 0 unchanged"
    second = update_index(trained_run, [g2], index_dir)
    # the first folder's images are still on disk: they stay, counted as unchanged, not removed
    assert second.line() == f"indexed: {count2} added, 0 updated, 0 removed, {count1} unchanged"
    assert second.folders == sorted([str(g1.resolve()), str(g2.resolve())])
    assert indexed_paths(index_dir) == images_under(g1, g2)
    # no folders and no run: refresh both with the index's own run
    removed_file = sorted(g2.glob("*.jpg"))[0]
    removed_file.unlink()
    write_image(g1 / "0099_c1s1_000001_01.jpg", size=(64, 32), seed=4, image_format="JPEG")
    refreshed = update_index(None, [], index_dir)
    assert refreshed.line() == f"indexed: 1 added, 0 updated, 1 removed, {count1 + count2 - 1} unchanged"
    assert indexed_paths(index_dir) == images_under(g1, g2)


def test_a_folder_is_known_by_its_resolved_path_and_nested_folders_add_nothing(
    trained_run, tiny_demo, tmp_path, monkeypatch
):
    from siamese_reid.search import update_index

    g1, g2, count1, count2 = two_galleries(tiny_demo, tmp_path)
    (tmp_path / "sub").mkdir()
    shutil.move(str(g2), tmp_path / "g1" / "nested")  # g1/nested holds g2's images
    index_dir = tmp_path / "index"
    update_index(trained_run, [g1 / "nested"], index_dir)
    (tmp_path / "link").symlink_to(g1, target_is_directory=True)
    monkeypatch.chdir(tmp_path / "sub")
    # g1 through a link contains the known g1/nested: it replaces it, nothing is embedded twice
    wider = update_index(trained_run, [Path("../link")], index_dir)
    assert wider.folders == [str(g1.resolve())]
    assert wider.line() == f"indexed: {count1} added, 0 updated, 0 removed, {count2} unchanged"
    # the same folder by another relative path, and a folder inside it, change nothing
    again = update_index(trained_run, [Path("../g1"), Path("../g1/nested")], index_dir)
    assert again.line() == f"indexed: 0 added, 0 updated, 0 removed, {count1 + count2} unchanged"
    assert again.folders == [str(g1.resolve())]
    nested = (g1 / "nested").resolve()
    assert again.warnings == [f"folder '{nested}' is inside indexed folder '{g1.resolve()}', which covers it"]
    assert indexed_paths(index_dir) == images_under(g1)


def test_removing_a_folder_drops_its_images_and_touches_no_file(trained_run, tiny_demo, tmp_path):
    from siamese_reid.search import update_index

    g1, g2, count1, count2 = two_galleries(tiny_demo, tmp_path)
    index_dir = tmp_path / "index"
    update_index(trained_run, [g1, g2], index_dir)
    on_disk = images_under(g1, g2)
    header_before = (index_dir / "index.json").read_text()
    unknown = r"has no folder '.*elsewhere' \(its folders: '.*g1', '.*g2'\); nothing was changed"
    with pytest.raises(ReIDError, match=unknown):
        update_index(None, [], index_dir, remove=[tmp_path / "elsewhere"])
    with pytest.raises(ReIDError, match="is inside indexed folder .*only a whole indexed folder can be removed"):
        update_index(None, [], index_dir, remove=[g1 / "deeper"])
    assert (index_dir / "index.json").read_text() == header_before
    summary = update_index(None, [], index_dir, remove=[tmp_path / "." / "g1"])
    assert summary.line() == (
        f"indexed: 0 added, 0 updated, 0 removed, {count2} unchanged, {count1} dropped with their folder"
    )
    assert summary.folders == [str(g2.resolve())]
    assert indexed_paths(index_dir) == images_under(g2)
    assert images_under(g1, g2) == on_disk  # nothing on disk was touched


def test_a_missing_folder_keeps_its_images_and_says_so(trained_run, tiny_demo, tmp_path):
    from siamese_reid.search import update_index

    g1, g2, count1, count2 = two_galleries(tiny_demo, tmp_path)
    index_dir = tmp_path / "index"
    update_index(trained_run, [g1, g2], index_dir)
    g1.rename(tmp_path / "unmounted")  # as if its drive were unplugged
    summary = update_index(None, [], index_dir)
    assert summary.line() == f"indexed: 0 added, 0 updated, 0 removed, {count2} unchanged"
    assert summary.warnings == [
        f"indexed folder '{g1.resolve()}' is missing (an unmounted drive?): its {count1} images are kept; "
        "remove the folder from the index to drop them"
    ]
    assert len(indexed_paths(index_dir)) == count1 + count2
    g1.mkdir()  # the bare mount point of an unmounted drive: an empty folder
    empty = update_index(None, [], index_dir)
    assert empty.line() == f"indexed: 0 added, 0 updated, 0 removed, {count2} unchanged"
    assert empty.warnings[0].startswith(f"indexed folder '{g1.resolve()}' is empty (an unmounted drive?)")
    g1.rmdir()
    (tmp_path / "unmounted").rename(g1)
    assert update_index(None, [], index_dir).line() == (
        f"indexed: 0 added, 0 updated, 0 removed, {count1 + count2} unchanged"
    )
    (g2 / "notes.txt").write_text("no images left, but not an empty folder")
    for image in g2.glob("*.jpg"):
        image.unlink()
    deleted = update_index(None, [], index_dir)  # images really deleted: removed
    assert deleted.line() == f"indexed: 0 added, 0 updated, {count2} removed, {count1} unchanged"
    assert deleted.warnings == []


def write_version_1_index(trained_run, folders, index_dir, identity_from_folder=False):
    """An index as the code before folder lists wrote it: index.json without folders or dates."""
    from siamese_reid.search import update_index

    update_index(trained_run, folders, index_dir, identity_from_folder=identity_from_folder)
    header = json.loads((index_dir / "index.json").read_text())
    for key in ("folders", "updated"):
        del header[key]
    del header["run"]["trained_on_demo"]
    header["version"] = 1
    assert set(header) == {"format", "version", "model", "run", "identities", "shards", "identity_from_folder"}
    assert set(header["run"]) == {"dir", "checkpoint", "metric", "flip_test"}
    (index_dir / "index.json").write_text(json.dumps(header))


def test_an_index_written_before_folder_lists_still_opens_and_keeps_its_images(trained_run, tiny_demo, tmp_path):
    from siamese_reid.search import Searcher, update_index
    from siamese_reid.search.info import index_info

    g1, g2, count1, count2 = two_galleries(tiny_demo, tmp_path)
    shutil.move(str(g1), tmp_path / "photos" / "street")  # images one level down
    street = tmp_path / "photos" / "street"
    index_dir = tmp_path / "index"
    write_version_1_index(trained_run, [tmp_path / "photos"], index_dir)
    info = index_info(index_dir)
    assert info.folders_inferred and [folder.path for folder in info.folders] == [str(street.resolve())]
    assert info.folders[0].images == count1 and info.updated is None
    assert len(Searcher(index_dir).index) == count1
    summary = update_index(trained_run, [g2], index_dir)
    assert summary.line() == f"indexed: {count2} added, 0 updated, 0 removed, {count1} unchanged"
    assert json.loads((index_dir / "index.json").read_text())["folders"] == sorted(
        [str(street.resolve()), str(g2.resolve())]
    )


def test_folders_of_an_old_index_with_identity_folders_are_the_folders_above_the_people():
    from siamese_reid.search.folders import infer_folders

    paths = ["/data/people/alice/1.jpg", "/data/people/bob/2.jpg", "/data/people/bob/more/3.jpg", "/other/x/4.jpg"]
    assert infer_folders(paths, identity_from_folder=True) == ["/data/people", "/other"]
    assert infer_folders(paths, identity_from_folder=False) == [
        "/data/people/alice",
        "/data/people/bob",
        "/other/x",
    ]


def test_info_and_index_on_the_command_line(trained_run, tiny_demo, tmp_path):
    g1, g2, count1, count2 = two_galleries(tiny_demo, tmp_path)
    index_dir = tmp_path / "index"
    first = command("search.py", "index", "--run", trained_run, "--images", g1, "--index", index_dir)
    assert first.returncode == 0, first.stderr
    second = command("search.py", "index", "--images", g2, "--index", index_dir)  # the run comes from the index
    assert second.returncode == 0 and second.stdout.strip().endswith(
        f"indexed: {count2} added, 0 updated, 0 removed, {count1} unchanged"
    ), second.stdout + second.stderr
    refreshed = command("search.py", "index", "--index", index_dir)
    assert refreshed.stdout.strip().endswith(f"0 added, 0 updated, 0 removed, {count1 + count2} unchanged")
    info = command("search.py", "info", "--index", index_dir)
    assert info.returncode == 0 and info.stderr == "", info.stderr
    lines = info.stdout.splitlines()
    assert f"images: {count1 + count2}" in lines
    assert f"  {g1.resolve()}  {count1} images" in lines and f"  {g2.resolve()}  {count2} images" in lines
    assert any(line.startswith(f"model: {(trained_run / 'last.keras').resolve()}") for line in lines)
    assert any(line.startswith("last updated: 20") for line in lines)
    assert "built-in demo" not in info.stdout + info.stderr  # this run trained on a dataset folder of its own
    described = json.loads(command("search.py", "info", "--index", index_dir, "--json").stdout)
    assert [(f["path"], f["images"], f["present"]) for f in described["folders"]] == [
        (str(g1.resolve()), count1, True),
        (str(g2.resolve()), count2, True),
    ]
    removed = command("search.py", "index", "--index", index_dir, "--remove", g1)
    assert removed.stdout.strip().endswith(f"{count1} dropped with their folder")
    unknown = command("search.py", "index", "--index", index_dir, "--remove", g1)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert unknown.stderr.startswith(f"error: index '{index_dir}' has no folder '{g1.resolve()}'")


# ---------------------------------------------------------------------------------------------
# A run trained on the built-in demo


def test_a_run_on_the_demo_is_recognised_from_its_config(tmp_path):
    from siamese_reid.config import DataConfig, DemoConfig
    from siamese_reid.data.demo import is_demo_run

    demo = DemoConfig(dir=str(tmp_path / "demo"))
    assert is_demo_run(DataConfig(root=str(tmp_path / "demo")), demo)  # what train.py saves on the demo
    assert not is_demo_run(DataConfig(root=str(tmp_path / "market")), demo)
    assert not is_demo_run(DataConfig(train_dir=str(tmp_path / "mine")), demo)
    # no dataset in a run's config: not written by training (an imported model), not the demo
    assert not is_demo_run(DataConfig(), demo)
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "demo_spec.json").write_text("{}")  # a demo folder generated elsewhere
    assert is_demo_run(DataConfig(root=str(tmp_path / "copied")), demo)


def test_search_warns_when_the_run_trained_on_the_demo(trained_run, tiny_demo, tmp_path, query_folder):
    # a run trained as train.py does with data.root not set: on the demo, generated into demo.dir
    demo_settings = [f"demo.dir={tmp_path / 'demo'}", "demo.num_train_identities=8", "demo.num_test_identities=6"]
    run_name = ["output.run_name=on-the-demo"]
    config = load_config(PROJECT_ROOT / "config.yaml", SETTINGS + demo_settings + run_name)
    _, demo_run = experiment.train(config, tmp_path / "runs")
    index_dir = tmp_path / "index"
    indexed = command("search.py", "index", "--run", demo_run, "--images", tiny_demo / "query", "--index", index_dir)
    warning = f"warning: run '{demo_run}' was trained on the built-in demo dataset (synthetic people)"
    assert indexed.returncode == 0 and warning in indexed.stderr, indexed.stderr
    assert [line for line in indexed.stderr.splitlines() if line.startswith("warning:")] == [
        line for line in indexed.stderr.splitlines() if line.startswith(warning)
    ]
    queried = command("search.py", "query", "--index", index_dir, "--json", real_images(query_folder, 1)[0])
    assert queried.returncode == 0
    assert f"warning: run '{demo_run.resolve()}' was trained on the built-in demo" in queried.stderr
    json.loads(queried.stdout)  # the warning stays off stdout
    info = command("search.py", "info", "--index", index_dir)
    assert "was trained on the built-in demo dataset" in info.stdout
    assert json.loads(command("search.py", "info", "--index", index_dir, "--json").stdout)["trained_on_demo"] is True


def test_query_identities_come_from_folder_names_as_the_gallery_s_did(trained_run, tiny_demo, tmp_path):
    from siamese_reid.search import Searcher, update_index

    people = tmp_path / "people"
    for image in sorted((tiny_demo / "bounding_box_test").glob("0*.jpg")):
        if int(image.name[:4]) > 0:
            (people / f"person{image.name[:4]}").mkdir(parents=True, exist_ok=True)
            shutil.copy(image, people / f"person{image.name[:4]}" / f"shot{image.name[5:]}")
    update_index(trained_run, [people], tmp_path / "index", identity_from_folder=True)
    searcher = Searcher(tmp_path / "index", threshold=0.5)
    query = sorted(people.rglob("*.jpg"))[0]
    (tmp_path / "Downloads").mkdir()
    stranger = shutil.copy(query, tmp_path / "Downloads" / "photo.jpg")
    answers, errors = searcher.search([query, stranger], top_k=3)
    assert errors == {}
    names = searcher.index.identity_names
    assert names[answers[0].query_pid] == query.parent.name
    expected = [names[result.pid] == query.parent.name for result in answers[0].results]
    assert answers[0].correct() == expected
    assert answers[1].query_pid is None and answers[1].correct() == [None, None, None]  # Downloads is no person


def test_library_errors_name_arguments_not_flags(trained_run, tiny_demo, tmp_path, query_folder):
    from siamese_reid.search import Searcher, update_index

    update_index(trained_run, [tiny_demo / "query"], tmp_path / "index")
    with pytest.raises(ReIDError, match="^top_k must be at least 1, got 0$"):
        Searcher(tmp_path / "index").search(real_images(query_folder, 1), top_k=0)
    with pytest.raises(ReIDError, match="does not exist yet: give run_dir, the run to embed with$"):
        update_index(None, [tiny_demo / "query"], tmp_path / "new")
    with pytest.raises(ReIDError, match="does not exist yet: give folders, the images to index$"):
        update_index(trained_run, [], tmp_path / "new")
    assert not (tmp_path / "new").exists()
