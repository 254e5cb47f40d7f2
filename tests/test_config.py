import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

from siamese_reid.config import Config, ExtraTrainingSet, config_to_dict, load_config, save_config
from siamese_reid.errors import ReIDError


def test_shipped_config_lists_every_key_with_its_default(project_root):
    shipped = yaml.safe_load((project_root / "config.yaml").read_text())
    defaults = config_to_dict(Config())
    assert shipped == defaults


def uncommented_keys(text):
    """Keys of a section not covered by a comment: walking up from a key through the keys right
    above it (a documented group), the first other line must be a comment, not a blank line or
    a section header."""
    lines = text.splitlines()

    def is_key(line):
        return line.startswith("  ") and line.strip() and not line.strip().startswith("#")

    missing = []
    for index, line in enumerate(lines):
        if not is_key(line):
            continue
        above = index - 1
        while above >= 0 and is_key(lines[above]):
            above -= 1
        if above < 0 or not lines[above].strip().startswith("#"):
            missing.append(line.strip())
    return missing


def test_every_key_in_shipped_config_is_commented(project_root):
    text = (project_root / "config.yaml").read_text()
    assert uncommented_keys(text) == []
    # the check itself catches a key right under its section header, and one cut off from its
    # commented group by a blank line
    no_comment = text.replace("  # Runs are written to <dir>/<run_name>; run_name null = a timestamp.\n", "")
    assert no_comment != text and uncommented_keys(no_comment) == ["dir: runs", "run_name: null"]
    cut_off = text.replace("  steps_per_epoch: 0\n  epochs: 150\n", "  steps_per_epoch: 0\n\n  epochs: 150\n")
    assert cut_off != text and uncommented_keys(cut_off) == ["epochs: 150"]


def test_overrides_are_typed_and_applied(project_root):
    config = load_config(project_root / "config.yaml", ["training.epochs=3", "loss.soft=true", "data.root=/x"])
    assert config.training.epochs == 3
    assert config.loss.soft is True
    assert config.data.root == "/x"
    assert config.training.learning_rate == pytest.approx(3e-4)
    assert load_config(None, ["training.learning_rate=1e-3"]).training.learning_rate == 1e-3


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().training.epochs = 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.epocs=3", "unknown config key 'training.epocs' (did you mean 'epochs'?)"),
        ("trainig.epochs=3", "unknown config section 'trainig' (did you mean 'training'?)"),
        ("training.epochs=three", "config key 'training.epochs' must be of type int"),
        ("training.epochs=0", "config key 'training.epochs' must be >= 1"),
        ("loss.distance_metric=L3", "must be one of ['L2', 'squared-L2', 'angular']"),
        ("model.backbone=vgg", "did you mean 'vgg16'?"),
        ("loss.margin=-1", "config key 'loss.margin' must be >= 0.0"),
        ("training.epochs", "an override must read section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ReIDError, match=None) as caught:
        load_config(None, [override])
    assert message in str(caught.value)


def test_typo_in_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  learning_rat: 0.1\n")
    with pytest.raises(ReIDError, match="did you mean 'learning_rate'"):
        load_config(path)


def test_extra_train_entries_are_typed_and_survive_a_saved_run(tmp_path):
    entries = "[{root: /data/MSMT17_V2, layout: msmt17}, {root: /data/Market-1501}]"
    config = load_config(None, [f"data.extra_train={entries}", "data.cuhk03_subset=labeled"])
    assert config.data.extra_train == (
        ExtraTrainingSet("/data/MSMT17_V2", "msmt17"),
        ExtraTrainingSet("/data/Market-1501", "market"),
    )
    save_config(config, tmp_path / "config.yaml")  # what a run folder keeps and --resume compares
    assert load_config(tmp_path / "config.yaml") == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["data"]["extra_train"][0] == {
        "root": "/data/MSMT17_V2",
        "layout": "msmt17",
    }
    hash(config)  # frozen all the way down


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.extra_train=/data/x", "config key 'data.extra_train' must be a list of mappings with keys root, layout"),
        ("data.extra_train=[/data/x]", "config key 'data.extra_train[0]' must be a mapping with keys root, layout"),
        ("data.extra_train=[{layout: msmt17}]", "config key 'data.extra_train[0].root' is required"),
        ("data.extra_train=[{root: /x, layout: msmt}]", "'data.extra_train[0].layout' must be one of"),
        ("data.extra_train=[{root: /x, rot: /y}]", "config key 'data.extra_train[0].rot' (did you mean 'root'?)"),
        ("data.layout=msmt", "did you mean 'msmt17'?"),
        ("data.cuhk03_subset=label", "config key 'data.cuhk03_subset' must be one of ['detected', 'labeled']"),
        ("data.msmt17_val=validation", "config key 'data.msmt17_val' must be one of ['unused', 'train']"),
    ],
)
def test_bad_data_keys_name_the_key(override, message):
    with pytest.raises(ReIDError) as caught:
        load_config(None, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("training: [\n")
    with pytest.raises(ReIDError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ReIDError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_config_typo_in_one_line_and_fails(tmp_path, project_root):
    result = subprocess.run(
        [sys.executable, "train.py", "--set", "training.epocs=3", "--output_dir", str(tmp_path)],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown config key 'training.epocs' (did you mean 'epochs'?)"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key", ["training.seed", "data.split_seed", "demo.seed"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_seeds_out_of_numpys_range_are_a_config_error(key, value):
    # numpy's Generator takes seeds in [0, 2**32 - 1]: outside it, a config error, not a numpy traceback
    with pytest.raises(ReIDError, match=f"config key '{key}' must be"):
        load_config(None, [f"{key}={value}"])


def test_train_py_run_from_another_folder_reads_the_repository_config(tmp_path, project_root):
    result = subprocess.run(
        [sys.executable, str(project_root / "train.py"), "--set", "training.epocs=3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"config: {project_root / 'config.yaml'}" in result.stdout
    assert result.returncode == 2 and not list(tmp_path.iterdir())  # and nothing was created


def test_startup_noise_is_filtered_but_errors_are_kept():
    # the entry points' filter: TensorFlow's info lines go, real errors stay visible
    from siamese_reid import console

    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1795265333.344540    3640 port.cc:153] oneDNN custom operations are on.\n",
        "To enable the following instructions: AVX2 AVX512F, in other operations, rebuild TensorFlow\n",
    ]
    cuda = "E0000 00:00:1795270656.490208 7147 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
    real = "E0000 00:00:1795270659.239152 7147 something.cc:1] Could not open the weights file\n"
    assert all(console.is_startup_noise(line, has_nvidia_driver=False) for line in noise)
    assert console.is_startup_noise(cuda, has_nvidia_driver=False)  # no driver: CUDA failing is expected
    assert not console.is_startup_noise(cuda, has_nvidia_driver=True)  # a driver: a broken GPU set-up, shown
    assert not console.is_startup_noise(real, has_nvidia_driver=False)


def test_learning_rate_milestones_are_a_list_of_epochs(tmp_path):
    config = load_config(None, ["training.schedule=multistep", "training.lr_milestones=[30, 60]"])
    assert config.training.lr_milestones == (30, 60)
    assert load_config(None, ["training.lr_milestones=50"]).training.lr_milestones == (50,)
    assert load_config(None, ["training.lr_milestones=[]"]).training.lr_milestones == ()
    save_config(config, tmp_path / "saved.yaml")  # what a run folder keeps, and --resume reads
    assert "lr_milestones:\n  - 30\n  - 60\n" in (tmp_path / "saved.yaml").read_text()
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.lr_milestones=[60, 30]"], "'training.lr_milestones' must be increasing epochs, got [60, 30]"),
        (["training.lr_milestones=[0, 30]"], "config key 'training.lr_milestones[0]' must be >= 1"),
        (["training.lr_milestones=[forty]"], "config key 'training.lr_milestones[0]' must be of type int"),
        (
            ["training.sampler=triplet", "loss.id_weight=1"],
            "'loss.id_weight' needs 'training.sampler: pk'",
        ),
        (
            ["training.sampler=triplet", "loss.center_weight=0.0005"],
            "'loss.center_weight' needs 'training.sampler: pk'",
        ),
        (
            ["training.sampler=triplet", "loss.triplet_feature=pre_bnneck"],
            "'loss.triplet_feature' needs 'training.sampler: pk'",
        ),
        (
            ["training.sampler=triplet", "loss.stripe_id_weight=1"],
            "'loss.stripe_id_weight' needs 'training.sampler: pk'",
        ),
        (["loss.stripe_id_weight=1", "model.stripes=1"], "'loss.stripe_id_weight' needs 'model.stripes' of 2 or more"),
        (["loss.triplet_weight=0"], "'loss.id_weight' and 'loss.stripe_id_weight' are all 0"),
        (["loss.triplet_feature=pre_bnneck", "model.bnneck=false"], "'pre_bnneck' needs 'model.bnneck: true'"),
        (["model.last_stride=3"], "config key 'model.last_stride' must be <= 2"),
        (["augment.erasing_fill=zero"], "must be one of ['random', 'mean']"),
        (["loss.triplet_feature=pre_bn"], "did you mean 'pre_bnneck'?"),
        (["training.precision=bf16"], "must be one of ['float32', 'mixed_float16', 'mixed_bfloat16', 'auto']"),
        (["evaluation.score_test=false"], "'evaluation.score_test' false needs a validation split"),
    ],
)
def test_strong_baseline_switches_that_cannot_work_are_named(overrides, message):
    with pytest.raises(ReIDError) as caught:
        load_config(None, overrides)
    assert message in str(caught.value)


def test_the_strong_baseline_switches_load_together(project_root):
    config = load_config(
        project_root / "config.yaml",
        [
            "model.backbone=resnet50",
            "model.last_stride=1",
            "loss.triplet_feature=pre_bnneck",
            "loss.id_weight=1",
            "loss.center_weight=0.0005",
            "loss.triplet_weight=0",
            "augment.erasing_fill=mean",
            "training.schedule=multistep",
            "training.precision=auto",
        ],
    )
    assert (config.loss.id_weight, config.loss.label_smoothing, config.loss.center_learning_rate) == (1.0, 0.1, 0.5)


def test_a_run_saved_before_stripes_existed_keeps_its_global_pooling(tmp_path):
    # A run folder's config.yaml from before `model.stripes` lists every other model key; it
    # trained a globally pooled tower, and resuming or re-running it must rebuild that tower.
    saved = config_to_dict(Config())
    del saved["model"]["stripes"]
    (tmp_path / "old_run_config.yaml").write_text(yaml.safe_dump(saved))
    assert load_config(tmp_path / "old_run_config.yaml").model.stripes == 1
    assert load_config(tmp_path / "old_run_config.yaml", ["model.stripes=4"]).model.stripes == 4
    # a short hand-written config gets today's default
    (tmp_path / "short.yaml").write_text("model:\n  pooling: gem\n")
    assert load_config(tmp_path / "short.yaml").model.stripes == Config().model.stripes == 4


def test_loading_a_config_imports_no_tensorflow(project_root):
    # a config is plain data: a notebook, a service or a CLI that only reads one starts at once
    import subprocess
    import sys

    code = (
        "import sys; from siamese_reid.config import load_config; "
        f"load_config({str(project_root / 'config.yaml')!r}, ['model.backbone=resnet50']); "
        "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_choice_names_of_the_config_are_those_of_the_code():
    import importlib

    from siamese_reid import config

    for constant, source in config.CHOICE_SOURCES.items():
        module_name, attribute = source.split(":")
        implemented = tuple(getattr(importlib.import_module(module_name), attribute))
        assert getattr(config, constant) == implemented, constant


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.backbone=mobilenetv2", "model.last_stride=1"],
            "last_stride 1 is implemented for ['resnet50', 'vgg16', 'vgg16_bn'] only, not mobilenetv2",
        ),
        (["model.vgg_blocks=2", "model.freeze_blocks=3"], "model.freeze_blocks must be between 0 and 2"),
        (["loss.name=semihard", "loss.soft=true"], "the semihard loss has no soft-margin variant"),
    ],
)
def test_rules_of_one_builder_are_checked_once_where_the_model_is_built(overrides, message):
    # each is written once, in the builder a Python caller also reaches; a run still stops
    # with one line, before its first epoch
    import tensorflow as tf

    from siamese_reid.model.building import build_training_model

    config = load_config(None, ["data.image_height=64", "data.image_width=32", *overrides])
    with pytest.raises(ReIDError, match=re.escape(message)):
        build_training_model(config, steps=2, strategy=tf.distribute.get_strategy(), num_identities=4)


def test_a_run_folder_of_the_triplet_sampler_that_saved_loss_name_triplet_still_loads(tmp_path):
    # loss.name does not offer "triplet" (the triplet sampler chooses that loss itself), yet a
    # saved run folder that names it loads
    with pytest.raises(ReIDError, match="loss.name"):
        load_config(None, ["loss.name=triplet"])
    saved = tmp_path / "config.yaml"
    saved.write_text("training:\n  sampler: triplet\nloss:\n  name: triplet\n")
    config = load_config(saved)
    assert (config.training.sampler, config.loss.name) == ("triplet", "batch_hard")
