"""The figures of a run: CMC, retrieval examples, training curves, pair distances, an
embedding projection.

Plot functions return a matplotlib `Figure` and never save it: the caller decides (the report
saves them with `save_figure`, a notebook shows them).
"""

import re

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # backend-free: works headless and shows inline in notebooks
from PIL import Image

from siamese_reid import files
from siamese_reid.data.scan import upright
from siamese_reid.evaluation.protocol import protocol_gallery_mask
from siamese_reid.evaluation.ranking import top_k_gallery
from siamese_reid.formatting import percent


def _subplots(rows=1, columns=1, **kwargs):
    figure = Figure(**kwargs)
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def save_figure(figure, path, dpi=120):
    return files.write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=dpi, format="png"))


def plot_cmc(cmc, label=None, split=None):
    """CMC curve, ranks 1..len(cmc), titled with the split it was measured on ("test",
    "validation") when given; returns the Figure."""
    figure, axes = _subplots(figsize=(6, 4))
    axis = axes[0, 0]
    ranks = np.arange(1, len(cmc) + 1)
    axis.plot(ranks, 100 * np.asarray(cmc), marker="o", markersize=3, label=label)
    title = "CMC curve" if split is None else f"CMC curve, {split} split"
    axis.set(xlabel="rank", ylabel="matching rate (%)", title=title, ylim=(0, 101), xlim=(1, len(cmc)))
    axis.grid(alpha=0.3)
    if label:
        axis.legend()
    figure.tight_layout()
    return figure


def framed_image(path, color, size, width=4):
    """The image file upright, resized to `size` (height, width), framed in `color` unless None."""
    with Image.open(path) as stored:
        image = upright(stored).convert("RGB").resize((size[1], size[0]))
    array = np.asarray(image).copy()
    if color is not None:
        rgb = {"green": (0, 200, 0), "red": (230, 0, 0), "blue": (30, 90, 230)}[color]
        array[:width], array[-width:], array[:, :width], array[:, -width:] = rgb, rgb, rgb, rgb
    return array


def plot_retrieval_examples(
    query_indices, query_samples, gallery_samples, distances, top_k=5, identity_names=None, chosen="chosen"
):
    """Query -> top-k gallery images; correct matches framed green, wrong ones red, under a
    caption that says how many of the queries are shown, how they were `chosen` (e.g. "drawn
    at random"), and what the colours mean.

    `distances` gives a query's row of distances as `distances[query_index]`: a matrix, or the
    rows the ranking was scored on (`Evaluation.rows`, or `analysis.run_distances` for a saved
    run; re-ranked ones when re-ranking was on), computed only for the queries shown. Gallery
    images the protocol ignores for a query (same identity and camera, junk) are not shown, so
    the figure shows exactly the ranking that was scored. Identities are labelled with their
    folder names when `identity_names` (pid -> name) gives them. Returns the Figure.
    """
    identity_names = identity_names or {}
    gallery_pids = np.array([s.pid for s in gallery_samples])
    gallery_camids = np.array([s.camid for s in gallery_samples])
    size = (128, 64)
    rows = len(query_indices)
    figure, axes = _subplots(rows, top_k + 1, figsize=(1.4 * (top_k + 1), 2.6 * rows))
    for row, query_index in enumerate(query_indices):
        query = query_samples[query_index]
        keep = protocol_gallery_mask(query.pid, query.camid, gallery_pids, gallery_camids)
        query_distances = distances[query_index]
        ranked = top_k_gallery(query_distances, keep, top_k)
        axes[row, 0].imshow(framed_image(query.path, None, size))
        axes[row, 0].set_title(f"query\nid {identity_names.get(query.pid, query.pid)} cam {query.camid}", fontsize=8)
        for column in range(top_k):
            axis = axes[row, column + 1]
            if column < len(ranked):
                match = gallery_samples[ranked[column]]
                color = "green" if match.pid == query.pid else "red"
                axis.imshow(framed_image(match.path, color, size))
                distance = query_distances[ranked[column]]
                name = identity_names.get(match.pid, match.pid)
                axis.set_title(f"{column + 1}: id {name}\nd={distance:.3f}", fontsize=7)
        for axis in axes[row]:
            axis.axis("off")
    figure.suptitle(
        f"{rows} of {len(query_samples)} queries, {chosen}, and their top {top_k}\n"
        "green frame: the same person (correct); red frame: another person (wrong)",
        fontsize=8,
    )
    figure.tight_layout()
    return figure


# Loss columns of history.csv besides the total "loss": the per-output losses of the
# strong-baseline training model (Keras names them after the model's outputs); the per-stripe
# ID losses (stripe_id_1_loss, ...) are drawn as their mean.
_COMPONENT_LOSSES = {"triplet_loss": "triplet", "id_loss": "identity (cross-entropy)", "center_loss": "center"}
_COLLAPSE_INDICATORS = {
    "mean_positive_distance": "mean positive distance",
    "mean_negative_distance": "mean negative distance",
    "active_triplet_fraction": "active triplet fraction",
}


def plot_loss_curves(history):
    """Training loss (with its parts, when the model has several losses) and the collapse
    indicators per epoch; None without a loss column."""
    if "loss" not in history:
        return None
    epochs = history["epoch"]
    figure, axes = _subplots(1, 2, figsize=(10, 4))
    loss_axis, stats_axis = axes[0]
    components = {label: history[key] for key, label in _COMPONENT_LOSSES.items() if key in history}
    stripe_columns = [key for key in history if re.fullmatch(r"stripe_id_\d+_loss", key)]
    if stripe_columns:  # one curve for all stripes: their mean is what loss.stripe_id_weight weighs
        components[f"identity per stripe (mean of {len(stripe_columns)})"] = np.mean(
            [history[key] for key in stripe_columns], axis=0
        )
    loss_axis.plot(epochs, history["loss"], marker="o", markersize=3, label="total" if components else None)
    for label, values in components.items():
        loss_axis.plot(epochs, values, marker="o", markersize=2, label=label)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Training loss")
    loss_axis.grid(alpha=0.3)
    if components:
        loss_axis.legend(fontsize=8)
        # Keras logs each part unweighted: the center loss of a 2048-d feature is thousands
        # while the triplet loss is below 1, so only a log scale shows every curve move.
        parts = np.concatenate([history["loss"], *components.values()])
        if np.all(parts[np.isfinite(parts)] > 0):
            loss_axis.set(yscale="log", ylabel="loss (log scale; parts unweighted)")
    for key, label in _COLLAPSE_INDICATORS.items():
        # a training model with several outputs prefixes the triplet output's metrics
        column = key if key in history else f"triplet_{key}"
        if column in history:
            stats_axis.plot(epochs, history[column], marker="o", markersize=3, label=label)
    stats_axis.set(xlabel="epoch", title="Collapse indicators")
    stats_axis.grid(alpha=0.3)
    if stats_axis.get_legend_handles_labels()[0]:
        stats_axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_retrieval_per_epoch(history, split_name="query / gallery"):
    """Rank-1 and mAP of the epochs that were evaluated, on `split_name`; None when none was.
    Reads the columns of either split (val_* or test_*), whichever the run scored."""
    split = next((split for split in ("val", "test") if f"{split}_rank1" in history), None)
    if split is None or not np.isfinite(history[f"{split}_rank1"]).any():
        return None
    finite = np.isfinite(history[f"{split}_rank1"])
    epochs = history["epoch"][finite]
    figure, axes = _subplots(figsize=(6, 4))
    axis = axes[0, 0]
    axis.plot(epochs, 100 * history[f"{split}_rank1"][finite], marker="o", label="rank-1")
    axis.plot(epochs, 100 * history[f"{split}_mAP"][finite], marker="s", label="mAP")
    axis.set(xlabel="epoch", ylabel="%", title=f"Retrieval on {split_name}", ylim=(0, 101))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


def plot_pair_distances(positive, negative, thresholds):
    """Histograms of positive and negative pair distances with threshold lines.

    Args:
      positive, negative: 1-D arrays of pair distances.
      thresholds: {label: evaluation.threshold.Threshold}; the first is drawn solid.
    """
    figure, axes = _subplots(figsize=(7, 4))
    axis = axes[0, 0]
    bins = np.linspace(0, max(positive.max(), negative.max()), 50)
    axis.hist(negative, bins=bins, alpha=0.6, density=True, label=f"different identity ({len(negative)} pairs)")
    axis.hist(positive, bins=bins, alpha=0.6, density=True, label=f"same identity ({len(positive)} pairs)")
    for index, (label, threshold) in enumerate(thresholds.items()):
        axis.axvline(
            threshold.value,
            color="k",
            linestyle="-" if index == 0 else "--",
            label=f"{label}: {threshold.value:.3f}, TAR {percent(threshold.true_accept_rate)}, "
            f"FAR {percent(threshold.false_accept_rate)}",
        )
    axis.set(xlabel="distance", ylabel="density", title="Pair distances and the no-match threshold")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_embedding_projection(points, pids):
    """A 2-D projection of embeddings with one colour per identity (no colour is shared by two
    identities), e.g. `analysis.project_2d` of a gallery. Returns the Figure.

    Args:
      points: float array of shape [num_images, 2].
      pids: int array of shape [num_images], the identity of each point.
    """
    identities, colour_index = np.unique(pids, return_inverse=True)
    # a seeded shuffle of evenly spaced hues: identities with adjacent numbers get distant hues
    hues = np.random.default_rng(0).permutation(len(identities)) / max(len(identities), 1)
    colours = matplotlib.colormaps["hsv"](hues)[colour_index]
    figure, axes = _subplots(figsize=(6, 6))
    axis = axes[0, 0]
    axis.scatter(points[:, 0], points[:, 1], c=colours, s=12)
    axis.set(
        xlabel="first principal component",
        ylabel="second principal component",
        title=f"{len(points)} embeddings of {len(identities)} identities, one colour each",
    )
    figure.tight_layout()
    return figure
