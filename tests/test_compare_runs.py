"""experiments/compare_runs.py: the query-by-query difference docs/results.md quotes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siamese_reid.errors import ReIDError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT_ROOT / "experiments" / "compare_runs.py"


def load_script(path=SCRIPT):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_runs = load_script()
keep_record = load_script(PROJECT_ROOT / "experiments" / "keep_record.py")


def write_run(folder, average_precisions=None, query_dir="query", validation_fraction=0.0, epochs=None):
    """A folder as a run or evaluation leaves it, as far as the script reads it; without
    `average_precisions`, one that never scored the test split."""
    folder.mkdir()
    if average_precisions is not None:
        np.save(folder / "query_average_precisions.npy", np.array(average_precisions, dtype=np.float64))
        (folder / "metrics.json").write_text(json.dumps({"split": "test"}))  # written last, by a whole report
    (folder / "config.yaml").write_text(
        f"data:\n  query_dir: {query_dir}\n  gallery_dir: gallery\n  train_dir: train\n"
        f"  validation_fraction: {validation_fraction}\ntraining:\n  epochs: 32\n"
    )
    if epochs is not None:  # a run folder's history, one row per epoch trained; an evaluation folder has none
        rows = "".join(f"{epoch},0.5\n" for epoch in range(1, epochs + 1))
        (folder / "history.csv").write_text("epoch,loss\n" + rows)
    return folder


def compare(*arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True)


def test_the_difference_is_taken_query_by_query_over_queries_both_runs_scored(tmp_path):
    # Query 4 has no match (NaN) in either run, query 5 is scored by one run only: neither counts.
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0, 0.25, np.nan, 0.75])
    candidate = write_run(tmp_path / "candidate", [1.0, 1.0, 0.5, np.nan, np.nan])
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode == 0, result.stderr
    # by hand: differences 50, 0, 25 points; mean 25; sample standard deviation 25; / sqrt(3).
    # A difference of the two means would give 12.5 (the baseline's mean counts query 5) and an
    # unpaired error sqrt(var_a / n_a + var_b / n_b), not 14.4.
    assert "+25.0 ± 14.4 points query by query (3 queries)" in result.stdout
    assert "grouped by identity" not in result.stdout  # the folders saved no query identities
    assert "test mAP 62.5%" in result.stdout  # each run's own mAP: (0.5 + 1 + 0.25 + 0.75) / 4
    assert "test mAP 83.3%" in result.stdout


def test_runs_are_named_with_the_epochs_their_history_shows(tmp_path):
    # a time budget trains 10 epochs on one CPU and 32 on another: the difference is not the recipe's alone.
    # Both configs say 32 epochs; a run stopped or reported short of them trained what its history shows.
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0], epochs=32)
    candidate = write_run(tmp_path / "candidate", [1.0, 1.0], epochs=10)
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode == 0, result.stderr
    assert "baseline: test mAP 75.0% after 32 epochs" in result.stdout
    assert "candidate: test mAP 100.0% after 10 epochs" in result.stdout
    assert "note: the runs trained different epochs (10, 32)" in result.stdout
    same = write_run(tmp_path / "same", [1.0, 1.0], epochs=32)
    result = compare("--split", "test", baseline, same)
    assert result.returncode == 0, result.stderr
    assert "same: test mAP 100.0% after 32 epochs" in result.stdout and "different epochs" not in result.stdout
    # an evaluation folder (no history.csv) is named without a count and does not make a note
    evaluation = write_run(tmp_path / "evaluation", [1.0, 1.0])
    result = compare("--split", "test", baseline, evaluation)
    assert result.returncode == 0, result.stderr
    assert "evaluation: test mAP 100.0%, +25.0" in result.stdout and "different epochs" not in result.stdout


def test_paired_difference_matches_the_definition():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(size=200)
    candidate = np.clip(baseline + rng.normal(0.02, 0.05, size=200), 0, 1)
    mean, error, grouped, count = compare_runs.paired_difference(baseline, candidate)
    differences = [100 * (c - b) for b, c in zip(baseline, candidate, strict=True)]
    expected_mean = sum(differences) / 200
    expected_variance = sum((d - expected_mean) ** 2 for d in differences) / 199
    assert count == 200
    assert mean == pytest.approx(expected_mean)
    assert error == pytest.approx((expected_variance / 200) ** 0.5)
    assert grouped is None  # no identities given
    # one query per identity: grouping changes nothing
    assert compare_runs.paired_difference(baseline, candidate, np.arange(200))[2] == pytest.approx(error)


def test_the_grouped_error_is_the_cluster_robust_one_written_out():
    # Queries of one identity share its gallery images: their differences move together, and
    # the error of the mean must count identities, not queries. Written from the definition of
    # the cluster-robust variance of a mean, V = G / (G - 1) * sum_g (sum_{i in g} e_i)^2 / N^2,
    # e_i = d_i - mean (Cameron & Miller, "A Practitioner's Guide to Cluster-Robust Inference").
    rng = np.random.default_rng(1)
    identities = np.repeat(np.arange(40), 4)  # 40 identities of 4 queries
    shared = np.repeat(rng.normal(0.0, 0.08, size=40), 4)  # what one identity's queries share
    baseline = rng.uniform(0.2, 0.8, size=160)
    candidate = baseline + 0.02 + shared + rng.normal(0.0, 0.02, size=160)
    baseline[7] = np.nan  # unscored: left out of the mean and of its identity's sum
    candidate[:4] = np.nan  # identity 0 has no scored query: not a group (G = 39)
    mean, error, grouped, count = compare_runs.paired_difference(baseline, candidate, identities)

    kept = [i for i in range(4, 160) if i != 7]
    expected_mean = sum(100 * (candidate[i] - baseline[i]) for i in kept) / len(kept)
    sums = {}
    for i in kept:
        sums[identities[i]] = sums.get(identities[i], 0.0) + 100 * (candidate[i] - baseline[i]) - expected_mean
    variance = len(sums) / (len(sums) - 1) * sum(total**2 for total in sums.values()) / len(kept) ** 2
    assert count == 155 and len(sums) == 39 and mean == pytest.approx(expected_mean)
    assert grouped == pytest.approx(variance**0.5)
    assert grouped > 1.5 * error  # the shared part is what the per-query error misses


def test_the_test_split_groups_queries_by_the_identities_the_folder_saved(tmp_path):
    # queries 1-2 are one person, 3-4 another: differences 50, 50, 0, 0 points; mean 25;
    # identity sums of (d - mean) 50 and -50: sqrt(2 / 1 * 5000) / 4 = 25
    baseline = write_run(tmp_path / "baseline", [0.5, 0.5, 1.0, 1.0])
    candidate = write_run(tmp_path / "candidate", [1.0, 1.0, 1.0, 1.0])
    np.savez(baseline / "query_embeddings.npz", features=np.zeros((4, 2)), pids=np.array([7, 7, 9, 9]))
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode == 0, result.stderr
    assert "+25.0 ± 14.4 points query by query (4 queries), ± 25.0 grouped by identity" in result.stdout
    # a candidate whose saved queries are other people is not paired with the baseline's
    np.savez(candidate / "query_embeddings.npz", features=np.zeros((4, 2)), pids=np.array([7, 9, 7, 9]))
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert "scored other queries than" in result.stderr and "query identities differ" in result.stderr


def test_fewer_than_two_shared_queries_are_refused():
    with pytest.raises(ReIDError, match="share 1 scored queries"):
        compare_runs.paired_difference(np.array([0.5, np.nan]), np.array([1.0, 0.5]))


def test_runs_scored_on_different_queries_are_refused_in_one_line(tmp_path):
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0])
    candidate = write_run(tmp_path / "candidate", [0.5, 1.0, 0.25])
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: the runs were scored on different queries (2 and 3)"


def test_runs_of_other_query_folders_are_not_paired_even_with_as_many_queries(tmp_path):
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0], query_dir="market/query")
    candidate = write_run(tmp_path / "candidate", [0.5, 1.0], query_dir="duke/query")
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode != 0
    assert "scored other test queries" in result.stderr and "data.query_dir is 'duke/query'" in result.stderr


def test_one_folder_spelled_relative_and_absolute_is_the_same_folder(tmp_path, monkeypatch):
    # a record made with ../shared/data/... from the project root pairs with a run given /work/shared/data/...
    monkeypatch.chdir(tmp_path)
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0], query_dir="market/query")
    candidate = write_run(tmp_path / "candidate", [1.0, 1.0], query_dir=str(tmp_path / "market" / "query"))
    result = compare("--split", "test", baseline, candidate)
    assert result.returncode == 0, result.stderr
    assert "+25.0" in result.stdout


def test_validation_runs_must_hold_out_the_same_identities():
    from siamese_reid.config import load_config

    configs = [load_config(None, [f"data.validation_fraction={fraction}"]) for fraction in (0.1332, 0.2)]
    with pytest.raises(ReIDError, match="data.validation_fraction is 0.2, not 0.1332"):
        compare_runs.check_same_queries([Path("a"), Path("b")], configs, "validation")
    # CUHK03's detected and labeled boxes are the same people and cameras in other images
    configs = [load_config(None, [f"data.cuhk03_subset={subset}"]) for subset in ("detected", "labeled")]
    for split in ("validation", "test"):
        with pytest.raises(ReIDError, match="data.cuhk03_subset is 'labeled', not 'detected'"):
            compare_runs.check_same_queries([Path("a"), Path("b")], configs, split)


def test_a_folder_that_never_scored_the_test_split_is_named(tmp_path):
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0])
    unscored = write_run(tmp_path / "unscored")
    result = compare("--split", "test", baseline, unscored)  # no report at all
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert "unscored has no metrics.json: it has not finished a report" in result.stderr
    (unscored / "metrics.json").write_text(json.dumps({"split": "test"}))  # a report without the scores
    result = compare("--split", "test", baseline, unscored)
    assert result.returncode != 0
    assert "unscored/query_average_precisions.npy is missing" in result.stderr


def test_overrides_are_refused_where_saved_scores_are_read(tmp_path):
    baseline = write_run(tmp_path / "baseline", [0.5, 1.0])
    candidate = write_run(tmp_path / "candidate", [0.5, 1.0])
    result = compare("--split", "test", baseline, candidate, "--candidate-set", "evaluation.rerank=true")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert "--set and --candidate-set change how validation is scored; --split test reads saved scores" in result.stderr


def test_validation_is_scored_again_as_training_scored_it(tmp_path, tiny_demo, run_train, fast_settings):
    # A run against itself differs by nothing, and its validation mAP scored again from last.keras
    # is the one training recorded in metrics.json (the final report's, from the same weights).
    settings = [
        *fast_settings,
        f"data.root={tiny_demo}",
        "training.epochs=1",
        "training.identities_per_batch=4",
        "training.images_per_identity=2",
        "data.validation_fraction=0.3",
    ]
    metrics, run_dir = run_train(tmp_path, settings)
    baseline, itself = compare_runs.compare_runs([run_dir, run_dir])
    assert baseline.mAP == pytest.approx(100 * metrics["validation"]["mAP"], abs=1e-3)
    assert itself.difference == 0.0 and itself.standard_error == 0.0 == itself.identity_standard_error
    assert itself.queries == metrics["validation"]["num_valid_queries"]


def test_a_tuning_run_reports_on_validation_and_never_scores_test(
    tmp_path, tiny_demo, run_train, fast_settings, monkeypatch
):
    # evaluation.score_test false (what ablation.py sets): the run's report, per-query APs
    # included, is the validation split's, no evaluation ever embeds a test query, and the
    # script refuses to read the folder as test scores.
    from siamese_reid.evaluation import embeddings

    embedded = []  # every image any evaluation embeds goes through extract_embeddings
    extract_embeddings = embeddings.extract_embeddings

    def recording(model, paths, *arguments, **options):
        embedded.extend(paths)
        return extract_embeddings(model, paths, *arguments, **options)

    monkeypatch.setattr(embeddings, "extract_embeddings", recording)
    from siamese_reid import reporting

    cmc_titles = []  # the report's CMC figure names the split it was drawn from
    plot_cmc = reporting.plot_cmc

    def titled(*arguments, **options):
        figure = plot_cmc(*arguments, **options)
        cmc_titles.append(figure.axes[0].get_title())
        return figure

    monkeypatch.setattr(reporting, "plot_cmc", titled)
    settings = [
        *fast_settings,
        f"data.root={tiny_demo}",
        "training.epochs=2",
        "training.identities_per_batch=4",
        "training.images_per_identity=2",
        "data.validation_fraction=0.3",
        "evaluation.every_n_epochs=1",
        "evaluation.score_test=false",
    ]
    metrics, run_dir = run_train(tmp_path, settings)
    test_images = {str(path) for folder in ("query", "bounding_box_test") for path in (tiny_demo / folder).iterdir()}
    assert embedded and not test_images & set(embedded)
    assert metrics["split"] == "validation"
    assert metrics["mAP"] == metrics["validation"]["mAP"]
    assert cmc_titles == ["CMC curve, validation split"]
    saved = np.load(run_dir / "query_average_precisions.npy")
    assert len(saved) == metrics["validation"]["num_valid_queries"] + metrics["validation"]["num_skipped_queries"]
    result = compare("--split", "test", run_dir, run_dir)
    assert result.returncode != 0
    assert "reported on the validation split (evaluation.score_test: false)" in result.stderr
    assert result.stderr.count("\n") == 1
    # its saved validation APs are what scoring last.keras again gives, so its record (the run's
    # small files, keep_record.py) pairs without the model, and against the run itself differs by
    # 0, with the queries grouped by the identities the record kept
    from siamese_reid.learning_curves import read_curve
    from siamese_reid.runs import load_run_config

    rescored, identities = compare_runs.validation_average_precisions(
        [run_dir], [load_run_config(run_dir)], ["the test"]
    )
    np.testing.assert_allclose(rescored[0], saved, atol=1e-6)
    record = tmp_path / "records" / "tuning"
    written = keep_record.keep_record(run_dir, record)
    kept = {
        "config.yaml",
        "metrics.json",
        "history.csv",
        "run_cost.json",
        "run_info.json",
        "dataset_summary.json",
        "best.json",
        "query_average_precisions.npy",
        "query_identities.npy",
        "record.json",
    }
    assert set(written) == kept == {path.name for path in record.iterdir()}  # no model, embeddings or images
    assert json.loads((record / "record.json").read_text())["folder"] == run_dir.name
    np.testing.assert_array_equal(compare_runs.saved_query_identities(record), identities)
    baseline, candidate = compare_runs.compare_runs([record, run_dir])
    assert baseline.mAP == pytest.approx(100 * metrics["mAP"])
    assert candidate.difference == 0.0 == candidate.identity_standard_error
    assert candidate.queries == metrics["validation"]["num_valid_queries"]
    assert read_curve(record, "val_mAP", "record").values[-1] == pytest.approx(metrics["mAP"])
    with pytest.raises(ReIDError, match="a record is never overwritten"):
        keep_record.keep_record(run_dir, record)
    # a --set asks for scoring again, which needs the model the record does not keep; TensorFlow
    # is not even loaded to say so
    result = compare(record, run_dir, "--set", "evaluation.rerank=true")
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert "has no last.keras to score again, and it must be: --set or --candidate-set" in result.stderr
    # --candidate-set scores the candidate again and pairs it with the record's saved scores
    baseline, reranked = compare_runs.compare_runs([record, run_dir], candidate_overrides=["evaluation.rerank=true"])
    assert baseline.mAP == pytest.approx(100 * metrics["mAP"]) and reranked.queries == candidate.queries
    # paired with queries scored again from today's data, saved scores must show they were the
    # same people: without the record's identities they are refused
    (record / "query_identities.npy").unlink()
    with pytest.raises(ReIDError, match="kept no query identities to check its saved scores against the queries"):
        compare_runs.compare_runs([record, run_dir], candidate_overrides=["evaluation.rerank=true"])


def test_keeping_the_record_of_an_unfinished_run_is_refused_in_one_line(tmp_path):
    unfinished = write_run(tmp_path / "unfinished")  # no report yet
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "experiments" / "keep_record.py"), unfinished, tmp_path / "record"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"error: {unfinished} is not a finished run or evaluation: no metrics.json, query_average_precisions.npy"
    )
    assert not (tmp_path / "record").exists()
    # a run still training (its backup beside the metrics.json of an earlier report) is refused too
    (unfinished / "metrics.json").write_text("{}")
    np.save(unfinished / "query_average_precisions.npy", np.ones(2))
    (unfinished / "backup").mkdir()
    with pytest.raises(ReIDError, match="is not a finished run or evaluation: it is still training"):
        keep_record.keep_record(unfinished, tmp_path / "record")
    assert not list(tmp_path.glob("*record*"))  # nothing half-made beside it either


def saved_validation_folder(folder, average_precisions, pids, **protocol_changes):
    """A tuning run's record as compare_runs reads it: saved validation APs, the protocol
    metrics.json says they were scored with (the config's, unless changed), query identities."""
    from siamese_reid.config import load_config
    from siamese_reid.evaluation.evaluator import describe_distance
    from siamese_reid.evaluation.protocol import protocol_record

    write_run(folder, average_precisions, validation_fraction=0.1332)
    settings = load_config(folder / "config.yaml").evaluation
    protocol = protocol_record(settings, describe_distance(settings.metric, settings.rerank))
    metrics = {
        "split": "validation",
        "num_queries": len(average_precisions),
        "protocol": {**protocol, **protocol_changes},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    np.save(folder / "query_identities.npy", np.array(pids))
    return folder


def test_saved_validation_scores_pair_without_a_model_only_when_their_protocol_is_the_configs(tmp_path):
    from siamese_reid.runs import load_run_config

    # differences 50, 50, 0, 0 points by persons 7, 7, 9, 9: +25.0 ± 14.4, ± 25.0 grouped (as above)
    baseline = saved_validation_folder(tmp_path / "baseline", [0.5, 0.5, 1.0, 1.0], [7, 7, 9, 9])
    candidate = saved_validation_folder(tmp_path / "candidate", [1.0, 1.0, 1.0, 1.0], [7, 7, 9, 9])
    result = compare(baseline, candidate)
    assert result.returncode == 0, result.stderr
    assert "+25.0 ± 14.4 points query by query (4 queries), ± 25.0 grouped by identity" in result.stdout
    # scores made without the flip test while config.yaml asks for it are not what it scores
    unflipped = saved_validation_folder(tmp_path / "unflipped", [1.0, 1.0, 1.0, 1.0], [7, 7, 9, 9], flip_test=False)
    result = compare(baseline, unflipped)
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert "unflipped has no last.keras to score again, and it must be" in result.stderr
    assert "saved scores were made with another flip_test than its config.yaml gives (False, not True)" in result.stderr
    # nor are saved scores that do not match metrics.json's query count
    np.save(candidate / "query_average_precisions.npy", np.ones(5))
    with pytest.raises(ReIDError, match="holds 5 scores, not one for each of the 4 queries in metrics.json"):
        compare_runs.saved_average_precisions(candidate, load_run_config(candidate), "validation")
