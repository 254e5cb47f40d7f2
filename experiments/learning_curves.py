"""Draws runs' scores against training wall time in one figure (docs/figures/).

Each RUN is a run folder, optionally with a label and the metric to draw (default test_mAP):

    python experiments/learning_curves.py --output docs/figures/batch_hard_vs_triplet.png \
        "runs/market1501_cpu=P x K batch-hard (market1501_cpu)" \
        "runs/market1501_cpu_triplet=random triplets (market1501_cpu_triplet)"
    python experiments/learning_curves.py --output curve.png "RUN_A=validation:val_mAP" "RUN_B=test:test_mAP"

A label may end with ":METRIC" (val_mAP, test_mAP, val_rank1, ...). The run's history.csv must
hold elapsed_seconds, which every run writes.
"""

import argparse
from pathlib import Path


def parse_run(text, default_metric):
    """ "PATH[=LABEL[:METRIC]]" -> (path, metric, label), as read_curve takes them."""
    path, _, label = text.partition("=")
    metric = default_metric
    if ":" in label:
        label, metric = label.rsplit(":", 1)
    return Path(path), metric, label or Path(path).name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN[=LABEL[:METRIC]]")
    parser.add_argument("--metric", default="test_mAP", help="the score drawn when a RUN names none")
    parser.add_argument("--title", default="Learning curves")
    parser.add_argument("--output", required=True, help="PNG file to write")
    arguments = parser.parse_args()

    from siamese_reid.errors import ReIDError
    from siamese_reid.figures import save_figure
    from siamese_reid.learning_curves import plot_learning_curves, read_curve

    try:
        curves = [read_curve(*parse_run(text, arguments.metric)) for text in arguments.runs]
    except ReIDError as error:
        parser.exit(2, f"error: {error}\n")
    metric_name = arguments.metric.split("_", 1)[-1]
    figure = plot_learning_curves(curves, ylabel=metric_name, title=arguments.title)
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, Path(arguments.output))
    for curve in curves:
        print(f"{curve.label}: {100 * curve.values[-1]:.1f}% after {curve.seconds[-1] / 60:.0f} min")
    print(f"written to {arguments.output}")


if __name__ == "__main__":
    main()
