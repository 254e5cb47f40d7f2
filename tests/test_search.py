"""Export, gallery index and search, on a small trained run, as a user runs them."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from siamese_reid import experiment
from siamese_reid.config import load_config
from siamese_reid.errors import ReIDError
from tests.conftest import MARKET_SAMPLE, PROJECT_ROOT, write_image

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


def real_images(tiny_demo, count=6):
    folder = MARKET_SAMPLE / "query" if MARKET_SAMPLE.is_dir() else tiny_demo / "query"
    return sorted(folder.glob("*.jpg"))[:count]


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


def test_savedmodel_export_matches_the_keras_tower_without_the_package(trained_run, tiny_demo, tmp_path):
    import keras

    from siamese_reid.data.images import decode_image

    result = command("export.py", "--run", trained_run)
    assert result.returncode == 0, result.stderr[-2000:]
    export_dir = trained_run / "export" / "savedmodel"
    images = np.stack([decode_image(str(path), 32, 32).numpy() for path in real_images(tiny_demo)])
    np.save(tmp_path / "images.npy", images)
    # the files at their own size: the signature resizes them as the training pipeline does
    original = tuple(np.asarray(__import__("PIL.Image").Image.open(real_images(tiny_demo)[0])).shape[:2])
    np.save(
        tmp_path / "originals.npy", np.stack([decode_image(str(p), *original).numpy() for p in real_images(tiny_demo)])
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


def test_litert_and_onnx_exports_match_the_keras_tower(trained_run, tiny_demo, tmp_path):
    import keras
    import tensorflow as tf

    from siamese_reid.data.images import decode_image
    from siamese_reid.export import export_model

    tower = keras.saving.load_model(trained_run / "last.keras")
    images = np.stack([decode_image(str(path), 32, 32).numpy() for path in real_images(tiny_demo)])
    expected = tower.predict(images, verbose=0)
    export_model(tower, "litert", tmp_path / "litert")
    interpreter = tf.lite.Interpreter(
        str(tmp_path / "litert" / "model.tflite"),
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.resize_tensor_input(0, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    export_model(tower, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["images"]
    np.testing.assert_allclose(session.run(None, {"images": images})[0], expected, atol=1e-5)


def test_index_is_incremental_and_survives_a_crash(trained_run, tiny_demo, tmp_path, monkeypatch):
    from siamese_reid.search import gallery, load_index, update_index

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
    real_embed = gallery._embed

    def crash_on_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_embed(*args)

    monkeypatch.setattr(gallery, "_embed", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        update_index(trained_run, [photos], index_dir, batch_images=4)
    monkeypatch.setattr(gallery, "_embed", real_embed)
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


def test_query_command_line(trained_run, tiny_demo, tmp_path):
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
    queries = real_images(tiny_demo, 2)
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
        assert set(answer) == {"query", "results", "match", "threshold"}
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
def test_bad_input_is_one_line_and_a_non_zero_exit(trained_run, tiny_demo, tmp_path, arguments, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "modelless").mkdir()
    shutil.copy(trained_run / "config.yaml", tmp_path / "modelless" / "config.yaml")  # a run without a model
    values = {
        "empty": tmp_path / "empty",
        "tmp": tmp_path,
        "image": real_images(tiny_demo, 1)[0],
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


def test_index_inside_its_folder_modes_and_checkpoints(trained_run, tiny_demo, tmp_path):
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
    with pytest.raises(ReIDError, match="without --identity-from-folder"):
        update_index(trained_run, [photos], index_dir, identity_from_folder=True)
    update_index(trained_run, [tiny_demo / "query"], tmp_path / "best_index", checkpoint="best")
    with pytest.raises(ReIDError, match="fitted for last.keras .* give --threshold"):
        Searcher(tmp_path / "best_index")
    assert Searcher(tmp_path / "best_index", threshold=0.5).threshold == 0.5
