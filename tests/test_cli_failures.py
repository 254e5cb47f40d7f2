"""The entry points as a user runs them, given bad input and faults: each failure is one line
on stderr with exit status 2, and nothing the user had is lost."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from siamese_reid import experiment
from siamese_reid.config import load_config
from siamese_reid.errors import ReIDError
from siamese_reid.files import write_text
from siamese_reid.report import REPORT_PROGRESS
from siamese_reid.runs import create_evaluation_dir, create_run_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The smallest training that runs every stage: one VGG block on 32x32 images, one step.
TINY = [
    "data.image_height=32",
    "data.image_width=32",
    "model.vgg_blocks=1",
    "model.embedding_dim=16",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
    "training.steps_per_epoch=1",
    "training.epochs=1",
    "training.warmup_epochs=0",
    "evaluation.flip_test=false",
    "evaluation.num_examples=1",
]

# TensorFlow's C++ log lines: "E0000 00:00:1796053837.047473 5121 util.cc:131] ..."
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)


def run_script(script, *arguments, cwd=PROJECT_ROOT, timeout=240):
    """`python SCRIPT ARGUMENTS...` as a user types it; `--set` pairs come from `settings`."""
    command = [sys.executable, str(PROJECT_ROOT / script), *map(str, arguments)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def settings(*items):
    return [word for item in items for word in ("--set", item)]


def test_training_prints_no_tensorflow_log_lines_and_names_each_step_after_the_last_epoch(tmp_path, tiny_demo):
    # "E0000 ... oneDNN supports DT_INT32 only on platforms with AVX-512" appeared at the first
    # step: the loss transposed the integer labels, an op oneDNN takes over only for floats.
    result = run_script("train.py", "--output_dir", tmp_path, *settings(f"data.root={tiny_demo}", *TINY))
    assert result.returncode == 0, result.stderr
    assert not CPP_LOG_LINE.search(result.stderr), result.stderr
    # the last epoch's scoring (minutes on a large gallery, under a full progress bar) and the
    # report (figures, embeddings) each say what is happening
    lines = result.stdout.splitlines()
    assert any(line.startswith("epoch 1: scoring on query / gallery (test)... rank-1 ") for line in lines)
    after = lines[next(i for i, line in enumerate(lines) if line.startswith("training took")) :]
    assert any(line.startswith("no-match threshold") for line in after)
    # and the table says which split its scores are
    assert after.index(REPORT_PROGRESS) < after.index("Evaluation on the test split")


# ---------------------------------------------------------------------------------------------
# config.yaml and --set


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"training: 5\n", "config section 'training' in"),
        (b"training:\n  - epochs\n", "must be a mapping of keys to values"),
        (b"5: {}\n", "unknown config section '5'"),
        (b"training:\n  5: 3\n", "unknown config key 'training.5'"),
        (b"\xff\xfe training", "is not UTF-8 text"),
        # PyYAML keeps the last of two equal keys: the first section's keys would be lost silently
        (b"training:\n  epochs: 3\n  seed: 7\ntraining:\n  epochs: 4\n", "'training' is given twice"),
        (b"training:\n  epochs: 3\n  epochs: 4\n", "'epochs' is given twice"),
        # an emptied file is refused, not trained on with the built-in defaults unnoticed
        (b"", "is empty"),
        (b"# nothing but a comment\n", "is empty"),
        (b"training:\n  learning_rate: .nan\n", "config key 'training.learning_rate' must be a finite number"),
        (b"loss:\n  margin: .inf\n", "config key 'loss.margin' must be a finite number"),
    ],
)
def test_config_file_faults_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ReIDError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_config_file_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(ReIDError, match="is a folder"):
        load_config(tmp_path)


def test_yaml_merge_keys_may_be_overridden_beside_them(tmp_path):
    # the duplicate-key check must not refuse YAML's own override of merged keys
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  <<: {epochs: 3, seed: 7}\n  epochs: 4\n")
    config = load_config(path)
    assert (config.training.epochs, config.training.seed) == (4, 7)


@pytest.mark.parametrize("value", ["nan", "inf", "-.inf", "1e400"])
def test_non_finite_numbers_through_set_are_refused(value):
    with pytest.raises(ReIDError, match="must be a finite number"):
        load_config(None, [f"training.learning_rate={value}"])


def test_config_section_that_is_not_a_mapping_is_one_line_at_the_command_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("training: 5\n")
    result = run_script("train.py", "--config", tmp_path / "bad.yaml", "--output_dir", tmp_path / "runs")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: config section 'training'") and result.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Datasets


# ---------------------------------------------------------------------------------------------
# Folders that cannot be created


def test_folders_under_a_regular_file_are_one_line(tmp_path):
    blocking = tmp_path / "notes.txt"
    blocking.write_text("a file where a folder is asked for")
    with pytest.raises(ReIDError, match=f"'{blocking}' is a file, not a folder"):
        create_run_dir(blocking / "runs", "first")
    with pytest.raises(ReIDError, match=f"'{blocking}' is a file, not a folder"):
        create_evaluation_dir(blocking)
    with pytest.raises(ReIDError, match="is not an existing folder"):
        write_text(blocking / "figure.png", "")
    assert blocking.read_text() == "a file where a folder is asked for"


def test_output_dir_under_a_regular_file_is_one_line_at_the_command_line(tmp_path, tiny_demo):
    blocking = tmp_path / "notes.txt"
    blocking.write_text("")
    result = run_script("train.py", "--output_dir", blocking / "runs", *settings(f"data.root={tiny_demo}", *TINY))
    assert result.returncode == 2
    assert result.stderr == f"error: cannot create folder '{blocking / 'runs'}': '{blocking}' is a file, not a folder\n"


# ---------------------------------------------------------------------------------------------
# A trained run: evaluate.py, search.py and export.py


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_demo):
    config = load_config(PROJECT_ROOT / "config.yaml", [f"data.root={tiny_demo}", *TINY, "output.run_name=tiny"])
    _, run_dir = experiment.train(config, tmp_path_factory.mktemp("runs"))
    return run_dir


def test_interrupted_or_failed_evaluation_leaves_no_half_written_folder(trained_run, tiny_demo, tmp_path, monkeypatch):
    # Ctrl-C left evaluations/<time>/ with config.yaml and no metrics: it read as an evaluation
    from siamese_reid.evaluation import evaluator

    def interrupted(*arguments, **keywords):
        raise KeyboardInterrupt

    config = load_config(trained_run / "config.yaml", [f"data.root={tiny_demo}"])
    monkeypatch.setattr(evaluator, "evaluate_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.evaluate(trained_run / "last.keras", config, output_dir=tmp_path)
    assert list((tmp_path / "evaluations").iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "empty" / "query").mkdir(parents=True)
    empty = load_config(trained_run / "config.yaml", [f"data.root={tmp_path / 'empty'}"])
    with pytest.raises(ReIDError):
        experiment.evaluate(trained_run, empty, output_dir=tmp_path)
    assert list((tmp_path / "evaluations").iterdir()) == []


@pytest.mark.parametrize("keep_bytes", [0, 1000, -22])
def test_a_cut_short_keras_file_is_called_that(trained_run, tmp_path, keep_bytes):
    # Keras reports "File not found" for a .keras file that is there but truncated
    from siamese_reid.model.embedding import load_embedding_model

    whole = (trained_run / "last.keras").read_bytes()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(whole[:keep_bytes])
    with pytest.raises(ReIDError, match="this one is cut short or is not a model"):
        load_embedding_model(cut)
    with pytest.raises(ReIDError, match="is a folder, not a .keras model file"):
        load_embedding_model(tmp_path)


@pytest.fixture(scope="module")
def gallery_index(trained_run, tiny_demo, tmp_path_factory):
    from siamese_reid.search import update_index

    index_dir = tmp_path_factory.mktemp("index") / "gallery"
    update_index(trained_run, [tiny_demo / "bounding_box_test"], index_dir)
    return index_dir


def _damaged_copy(index_dir, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy)
    damage(copy)
    return copy


def _truncate_shard(folder):
    shard = next(folder.glob("shard-*.npz"))
    shard.write_bytes(shard.read_bytes()[:500])


def _drop_model_entry(folder):
    header = json.loads((folder / "index.json").read_text())
    del header["model"]
    (folder / "index.json").write_text(json.dumps(header))


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_truncate_shard, "is damaged (BadZipFile)"), (_drop_model_entry, "is damaged (no 'model' entry)")],
)
def test_a_damaged_index_is_one_line(gallery_index, tiny_demo, tmp_path, damage, message):
    # a cut-short shard (an interrupted copy of the folder) ended in a zipfile traceback
    from siamese_reid.search import Searcher, update_index

    damaged = _damaged_copy(gallery_index, tmp_path, damage)
    with pytest.raises(ReIDError, match=re.escape(message)):
        Searcher(damaged)
    with pytest.raises(ReIDError, match=re.escape(message)):
        update_index(json.loads((gallery_index / "index.json").read_text())["run"]["dir"], [tiny_demo], damaged)


def test_search_refuses_a_threshold_that_is_not_a_number_and_a_figure_with_nowhere_to_go(gallery_index, tiny_demo):
    query = sorted((tiny_demo / "query").glob("*.jpg"))[0]
    result = run_script("search.py", "query", "--index", gallery_index, "--threshold", "nan", query)
    assert result.returncode == 2 and result.stderr == "error: --threshold must be a finite distance, got nan\n"
    missing = gallery_index.parent / "no-such-folder" / "answers.png"
    result = run_script("search.py", "query", "--index", gallery_index, "--save", missing, query)
    assert result.returncode == 2
    assert result.stderr == f"error: cannot write '{missing}': '{missing.parent}' is not an existing folder\n"


def test_export_under_a_regular_file_is_one_line(trained_run, tmp_path):
    blocking = tmp_path / "notes.txt"
    blocking.write_text("")
    result = run_script("export.py", "--run", trained_run, "--output", blocking / "model")
    assert result.returncode == 2
    assert result.stderr == f"error: cannot create folder '{blocking}': '{blocking}' is a file, not a folder\n"


def test_resume_of_a_folder_that_is_not_a_run_says_so(tmp_path):
    result = run_script("train.py", "--resume", tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"error: cannot resume: '{tmp_path}' is not a training run folder (no config.yaml in it)\n"


def identity_folders_of(tiny_demo, root):
    """The demo's query and gallery as folders of identities (another dataset's layout)."""
    for split, folder in (("query", "query"), ("gallery", "bounding_box_test")):
        for image in sorted((tiny_demo / folder).glob("*.jpg")):
            pid = image.name.split("_")[0]
            if int(pid) <= 0:  # junk (-1) and distractors (0) are no identity folder
                continue
            (root / split / pid).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / split / pid / image.name)


@pytest.mark.parametrize("train_dir", [None, "market train folder"])
def test_evaluation_on_another_dataset_needs_only_its_query_and_gallery(trained_run, tiny_demo, tmp_path, train_dir):
    # cross-dataset evaluation: identity folders of another dataset, and no training folder
    # (or the run's own training folder, in another layout) must not stop it
    identity_folders_of(tiny_demo, tmp_path)
    overrides = [
        "data.layout=folders",
        f"data.query_dir={tmp_path / 'query'}",
        f"data.gallery_dir={tmp_path / 'gallery'}",
    ]
    if train_dir:
        overrides.append(f"data.train_dir={tiny_demo / 'bounding_box_train'}")
    config = load_config(trained_run / "config.yaml", overrides)
    metrics, output_dir = experiment.evaluate(trained_run / "last.keras", config, output_dir=tmp_path / "out")
    assert metrics["num_queries"] == sum(1 for _ in (tmp_path / "query").rglob("*.jpg"))
    assert (output_dir / "metrics.json").is_file()


def test_evaluate_py_scores_a_run_on_identity_folders_with_the_issues_flags(trained_run, tiny_demo, tmp_path):
    identity_folders_of(tiny_demo, tmp_path)
    result = run_script(
        "evaluate.py",
        "--run",
        trained_run,
        "--set",
        "data.layout=folders",
        "--query_dir",
        tmp_path / "query",
        "--gallery_dir",
        tmp_path / "gallery",
        "--output_dir",
        tmp_path / "out",
    )
    assert result.returncode == 0, result.stderr
    (evaluation,) = (tmp_path / "out" / "evaluations").iterdir()
    assert json.loads((evaluation / "metrics.json").read_text())["num_queries"] > 0


def test_a_run_that_names_no_dataset_is_not_scored_on_the_demo(trained_run, tmp_path):
    # an imported model's run folder names no dataset: evaluating it needs a query and gallery
    from siamese_reid.config import save_config
    from siamese_reid.runs import load_run_config

    imported = tmp_path / "imported"
    imported.mkdir()
    shutil.copy(trained_run / "last.keras", imported / "last.keras")
    config = load_run_config(trained_run, ["data.root=null"])
    save_config(config, imported / "config.yaml")
    with pytest.raises(ReIDError, match="names no dataset to evaluate on"):
        experiment.evaluate(imported, load_run_config(imported))
    assert not (imported / "evaluations").exists() or not any((imported / "evaluations").iterdir())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["index", "--images", "{images}", "--index", "{tmp}/i"],
            "does not exist yet: give --run, the run to embed with",
        ),
        (["index", "--index", "{tmp}/i"], "does not exist yet: give --images, the images to index"),
        (["index", "--index", "{tmp}/i", "--remove", "{images}"], "does not exist: it has no folder to remove"),
        (["info", "--index", "{tmp}/i"], "is not a siamese-reid index"),
        (["info", "--index", "{tmp}"], "is not a siamese-reid index"),
    ],
)
def test_search_on_an_index_that_does_not_exist_is_one_line(tiny_demo, tmp_path, arguments, message):
    # the library says run_dir / folders; the command line names its flags
    arguments = [argument.format(images=tiny_demo / "query", tmp=tmp_path) for argument in arguments]
    result = run_script("search.py", *arguments)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert not (tmp_path / "i").exists()
