"""Files and plots of a run: metrics.json, the summary table, CMC, retrieval examples, curves.

The only module that formats fractions as percentages.
"""

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # backend-free: works headless and shows inline in notebooks
from PIL import Image

from siamese_reid.evaluation.ranking import protocol_gallery_mask, top_k_gallery


def _subplots(rows=1, columns=1, **kwargs):
    figure = Figure(**kwargs)
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def ranking_metrics(ranking, num_query, num_gallery, protocol):
    """The metrics dictionary written to metrics.json (fractions, not percentages)."""
    cmc = ranking.cmc

    def rank(k):
        return float(cmc[min(k, len(cmc)) - 1])

    return {
        "rank1": rank(1),
        "rank5": rank(5),
        "rank10": rank(10),
        "mAP": ranking.mean_ap,
        "mINP": ranking.mean_inp,
        "num_queries": int(num_query),
        "num_valid_queries": ranking.num_valid_queries,
        "num_skipped_queries": ranking.num_skipped_queries,
        "num_gallery": int(num_gallery),
        "protocol": protocol,
        "cmc": [float(x) for x in cmc],
    }


def write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def metrics_table(metrics, title="Evaluation"):
    rows = [
        ("rank-1", f"{100 * metrics['rank1']:.1f}%"),
        ("rank-5", f"{100 * metrics['rank5']:.1f}%"),
        ("rank-10", f"{100 * metrics['rank10']:.1f}%"),
        ("mAP", f"{100 * metrics['mAP']:.1f}%"),
        ("mINP", f"{100 * metrics['mINP']:.1f}%"),
        ("queries", f"{metrics['num_valid_queries']} scored, {metrics['num_skipped_queries']} skipped"),
        ("gallery", str(metrics["num_gallery"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)] + [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def plot_cmc(cmc, path, label=None):
    """CMC curve, ranks 1..len(cmc)."""
    figure, axes = _subplots(figsize=(6, 4))
    axis = axes[0, 0]
    ranks = np.arange(1, len(cmc) + 1)
    axis.plot(ranks, 100 * np.asarray(cmc), marker="o", markersize=3, label=label)
    axis.set(xlabel="rank", ylabel="matching rate (%)", title="CMC curve", ylim=(0, 101), xlim=(1, len(cmc)))
    axis.grid(alpha=0.3)
    if label:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _framed(path, color, size, width=4):
    image = Image.open(path).convert("RGB").resize((size[1], size[0]))
    array = np.asarray(image).copy()
    if color is not None:
        rgb = {"green": (0, 200, 0), "red": (230, 0, 0)}[color]
        array[:width], array[-width:], array[:, :width], array[:, -width:] = rgb, rgb, rgb, rgb
    return array


def plot_retrieval_examples(query_indices, query_samples, gallery_samples, distances, path=None, top_k=5):
    """Query -> top-k gallery images; correct matches framed green, wrong ones red.

    Writes the figure to `path`, or returns it (for notebooks) when `path` is None.

    Gallery images the protocol ignores for a query (same identity and camera, junk) are not
    shown, so the figure shows exactly the ranking that was scored.
    """
    gallery_pids = np.array([s.pid for s in gallery_samples])
    gallery_camids = np.array([s.camid for s in gallery_samples])
    size = (128, 64)
    rows = len(query_indices)
    figure, axes = _subplots(rows, top_k + 1, figsize=(1.4 * (top_k + 1), 2.6 * rows))
    for row, query_index in enumerate(query_indices):
        query = query_samples[query_index]
        keep = protocol_gallery_mask(query.pid, query.camid, gallery_pids, gallery_camids)
        ranked = top_k_gallery(distances[query_index], keep, top_k)
        axes[row, 0].imshow(_framed(query.path, None, size))
        axes[row, 0].set_title(f"query\nid {query.pid} cam {query.camid}", fontsize=8)
        for column in range(top_k):
            axis = axes[row, column + 1]
            if column < len(ranked):
                match = gallery_samples[ranked[column]]
                color = "green" if match.pid == query.pid else "red"
                axis.imshow(_framed(match.path, color, size))
                distance = distances[query_index, ranked[column]]
                axis.set_title(f"{column + 1}: id {match.pid}\nd={distance:.3f}", fontsize=7)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    if path is None:
        return figure
    figure.savefig(path, dpi=110)
    return None


def read_history(path):
    """The training history CSV as {column: np.ndarray}; empty cells become NaN."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {key: np.array([_number(row.get(key)) for row in rows]) for key in rows[0]}


def _number(text):
    """CSVLogger writes "NA" for a metric missing in an epoch (evaluation did not run)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return np.nan


def plot_training_curves(history, output_dir):
    """Writes loss.png and retrieval_per_epoch.png (when evaluation ran during training)."""
    output_dir = Path(output_dir)
    written = []
    if "loss" in history:
        epochs = history["epoch"] + 1
        figure, axes = _subplots(1, 2, figsize=(10, 4))
        loss_axis, stats_axis = axes[0]
        loss_axis.plot(epochs, history["loss"], marker="o", markersize=3)
        loss_axis.set(xlabel="epoch", ylabel="triplet loss", title="Training loss")
        loss_axis.grid(alpha=0.3)
        for key, label in (
            ("mean_positive_distance", "mean positive distance"),
            ("mean_negative_distance", "mean negative distance"),
            ("active_triplet_fraction", "active triplet fraction"),
        ):
            if key in history:
                stats_axis.plot(epochs, history[key], marker="o", markersize=3, label=label)
        stats_axis.set(xlabel="epoch", title="Collapse indicators")
        stats_axis.grid(alpha=0.3)
        stats_axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(output_dir / "loss.png", dpi=120)
        written.append(output_dir / "loss.png")
    if "val_rank1" in history and np.isfinite(history["val_rank1"]).any():
        finite = np.isfinite(history["val_rank1"])
        epochs = history["epoch"][finite] + 1
        figure, axes = _subplots(figsize=(6, 4))
        axis = axes[0, 0]
        axis.plot(epochs, 100 * history["val_rank1"][finite], marker="o", label="rank-1")
        axis.plot(epochs, 100 * history["val_mAP"][finite], marker="s", label="mAP")
        axis.set(xlabel="epoch", ylabel="%", title="Retrieval on query / gallery", ylim=(0, 101))
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(output_dir / "retrieval_per_epoch.png", dpi=120)
        written.append(output_dir / "retrieval_per_epoch.png")
    return written
