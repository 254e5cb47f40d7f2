"""experiments/ablation.py: every variant is a valid recipe, and test numbers stay out unless asked."""

import importlib.util
from pathlib import Path

import pytest

from siamese_reid.config import load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def load_ablation():
    spec = importlib.util.spec_from_file_location("ablation", PROJECT_ROOT / "experiments" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablation = load_ablation()


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
def test_every_variant_is_a_valid_recipe_that_changes_what_it_says(name):
    overrides = ablation.variant_overrides(ablation.VARIANTS[name], epochs=120)
    config = load_config(PROJECT_ROOT / "config.yaml", ["data.validation_fraction=0.3", *overrides])
    today = load_config(PROJECT_ROOT / "config.yaml", ["data.validation_fraction=0.3"])
    assert (config == today) == (name == "today")


def test_multistep_milestones_keep_the_reference_proportions():
    multistep = ablation.VARIANTS["+multistep"]
    assert "training.lr_milestones=[40, 70]" in ablation.variant_overrides(multistep, epochs=120)
    assert "training.lr_milestones=[33, 58]" in ablation.variant_overrides(multistep, epochs=100)
    assert "training.lr_milestones=[1]" in ablation.variant_overrides(multistep, epochs=1)
    config = load_config(None, ablation.variant_overrides(ablation.VARIANTS["strong_baseline"], epochs=100))
    assert config.training.lr_milestones == (33, 58) and config.loss.triplet_feature == "pre_bnneck"


def test_the_table_shows_test_numbers_only_when_asked():
    row = {
        "variant": "today",
        "val_rank1": 0.5,
        "val_rank1_se": 0.1,
        "val_mAP": 0.4,
        "val_mAP_se": 0.05,
        "val_mAP_per_split": "0.300 0.500",
        "wall_seconds": 12.0,
        "test_rank1": 0.9,
        "test_mAP": 0.8,
    }
    hidden = ablation.markdown_table([row], report_test=False)
    assert "| 30.0% / 50.0% |" in hidden
    assert "50.0% ± 10.0" in hidden and "40.0% ± 5.0" in hidden and "90.0%" not in hidden and "test" not in hidden
    assert "90.0%" in ablation.markdown_table([row], report_test=True)
    failed = ablation.markdown_table([{"variant": "+center", "error": "out of memory"}], report_test=False)
    assert "| +center | failed: out of memory |" in failed


def test_a_variant_on_several_validation_splits_reports_their_mean_and_its_standard_error():
    def split_row(seed, rank1, mean_ap, rank1_se, mean_ap_se, seconds):
        return {
            "variant": "stripes8",
            "split_seed": seed,
            "description": "d",
            "overrides": "model.stripes=8",
            "val_rank1": rank1,
            "val_rank1_se": rank1_se,
            "val_mAP": mean_ap,
            "val_mAP_se": mean_ap_se,
            "wall_seconds": seconds,
            "precision": "mixed_bfloat16",
            "run_dir": f"runs/split{seed}",
        }

    row = ablation.mean_over_splits(
        [split_row(0, 0.9, 0.8, 0.06, 0.03, 100.0), split_row(1, 0.5, 0.6, 0.08, 0.04, 120.0)]
    )
    assert row["val_rank1"] == pytest.approx(0.7) and row["val_mAP"] == pytest.approx(0.7)
    # the spread between splits: stdev(0.9, 0.5) / sqrt(2) = 0.2828 / 1.4142 = 0.2, and 0.1 for mAP
    assert row["val_rank1_se"] == pytest.approx(0.2) and row["val_mAP_se"] == pytest.approx(0.1)
    assert [split["split_seed"] for split in row["splits"]] == [0, 1]
    single = ablation.mean_over_splits([split_row(3, 0.9, 0.8, 0.06, 0.03, 100.0)])
    assert single["val_mAP_se"] == 0.03  # one split: its query-sampling error
    assert row["val_mAP_per_split"] == "0.800 0.600" and row["split_seeds"] == "0 1" and row["wall_seconds"] == 110.0
    failed = ablation.mean_over_splits(
        [split_row(0, 0.9, 0.8, 0.06, 0.03, 100.0), {"variant": "x", "split_seed": 1, "error": "disk full"}]
    )
    assert failed["error"] == "split 1: disk full"


def test_runs_never_score_test_unless_report_test_is_given(monkeypatch):
    # the shared overrides decide evaluation.score_test; a --set of it is refused, not overridden
    for argv, expected in (([], "false"), (["--report-test"], "true")):
        monkeypatch.setattr("sys.argv", ["ablation.py", *argv])
        arguments = ablation.parse_arguments()
        assert f"evaluation.score_test={expected}" in ablation.base_overrides(arguments)
    monkeypatch.setattr("sys.argv", ["ablation.py", "--set", "evaluation.score_test=true"])
    with pytest.raises(SystemExit) as caught:
        ablation.parse_arguments()
    assert caught.value.code == 2
