"""Does training learn? Trained model vs the same model untrained vs a colour histogram.

Trains with the library workflow that train.py runs (`siamese_reid.experiment.train`) on a
dataset's train split, then scores three embeddings on its held-out query / gallery
identities under the Market-1501 protocol:

    python experiments/learning.py                                  # the built-in demo dataset
    python experiments/learning.py --set data.root=../shared/data/market1501-sample

Tune a recipe on the validation split (`--set data.validation_fraction=0.3`; its numbers are
printed as "validation"), never on the test rows; with `--set evaluation.score_test=false` too,
the whole table is the validation split's and the test split is never scored. Writes
<output_dir>/<run>/learning.json and prints a markdown table for docs/results.md, each number
with its standard error over queries.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--output_dir", default="experiments/results/learning")
    arguments = parser.parse_args()

    import keras

    from siamese_reid import experiment, reporting
    from siamese_reid.config import load_config, replace
    from siamese_reid.console import show_messages
    from siamese_reid.data.preparation import prepare_data
    from siamese_reid.evaluation import evaluate_features, evaluate_model
    from siamese_reid.evaluation.baselines import colour_histogram_features
    from siamese_reid.formatting import percent, percent_with_error
    from siamese_reid.model.building import build_tower, image_size

    show_messages()  # the run's progress, as train.py shows it
    config = load_config(arguments.config, arguments.overrides)
    started = time.time()
    trained, run_dir = experiment.train(config, arguments.output_dir)
    wall = time.time() - started
    (run_dir / "baselines").mkdir()
    config, data = prepare_data(config, run_dir / "baselines")
    # the baselines are scored on the split the trained run reported (validation when
    # evaluation.score_test is false), so the table compares like with like
    split = trained["split"]
    query, gallery = (data.query, data.gallery) if split == "test" else (data.validation_query, data.validation_gallery)
    keras.utils.set_random_seed(config.training.seed)  # the trained run's exact initial weights
    untrained_tower = build_tower(config)
    size = image_size(config)
    untrained = evaluate_model(untrained_tower, query, gallery, size, config.evaluation)
    histogram = evaluate_features(
        colour_histogram_features([s.path for s in query]),
        colour_histogram_features([s.path for s in gallery]),
        query,
        gallery,
        replace(config.evaluation, rerank=False, metric="euclidean"),
    )

    def row(ranking):
        metrics = reporting.ranking_metrics(ranking, len(query), len(gallery), {})
        return {key: metrics[key] for key in ("rank1", "mAP", "standard_errors")}

    rows = {
        "trained": {key: trained[key] for key in ("rank1", "mAP", "standard_errors")},
        "untrained (same model, random init)": row(untrained.ranking),
        "colour histogram (HSV, 6 stripes)": row(histogram.ranking),
    }
    result = {
        "dataset": config.data.root,
        "overrides": arguments.overrides,
        "wall_seconds_train_and_eval": wall,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "validation": trained.get("validation"),
        "split": split,
        "results": rows,
        "run_dir": str(run_dir),
    }
    reporting.write_json(run_dir / "learning.json", result)
    if trained.get("validation"):
        validation = trained["validation"]
        print(f"\nvalidation: rank-1 {percent(validation['rank1'])}, mAP {percent(validation['mAP'])}")
    print(f"\n{split} split:\n| embedding | rank-1 | mAP |\n|---|---|---|")
    for name, numbers in rows.items():
        errors = numbers["standard_errors"]
        rank1 = percent_with_error(numbers["rank1"], errors["rank1"])
        print(f"| {name} | {rank1} | {percent_with_error(numbers['mAP'], errors['mAP'])} |")
    print(f"\ntrain + evaluate wall time: {wall:.0f} s; run folder {run_dir}")


if __name__ == "__main__":
    main()
