"""Files and plots of a run: metrics.json, the summary table, CMC, retrieval examples, curves.

Plot functions return a matplotlib `Figure` and never save it: the caller decides (the report
saves them, a notebook shows them). The only module that formats fractions as percentages.
"""

import dataclasses
import logging
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # backend-free: works headless and shows inline in notebooks
from PIL import Image

from siamese_reid import files
from siamese_reid.data.scan import upright
from siamese_reid.evaluation.protocol import protocol_gallery_mask, protocol_record
from siamese_reid.evaluation.ranking import top_k_gallery
from siamese_reid.runs import (
    CMC_FIGURE,
    GALLERY_EMBEDDINGS,
    LOSS_FIGURE,
    METRICS,
    QUERY_AVERAGE_PRECISIONS,
    QUERY_EMBEDDINGS,
    RETRIEVAL_EXAMPLES_FIGURE,
    RETRIEVAL_PER_EPOCH_FIGURE,
    THRESHOLD,
    THRESHOLD_FIGURE,
)

logger = logging.getLogger(__name__)


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
        "standard_errors": standard_errors(ranking),
        "num_queries": int(num_query),
        "num_valid_queries": ranking.num_valid_queries,
        "num_skipped_queries": ranking.num_skipped_queries,
        "num_gallery": int(num_gallery),
        "protocol": protocol,
        "cmc": [float(x) for x in cmc],
    }


def standard_errors(ranking):
    """Standard errors of rank-1 and mAP over the scored queries: std / sqrt(n) of the per-query
    values (a hit indicator, an AP). With 75 queries and rank-1 near 50% that is about 0.06: a
    difference of a few points between two models on such a test set is noise."""
    scored = ranking.query_first_match_ranks >= 0
    per_query = {
        "rank1": (ranking.query_first_match_ranks[scored] == 0).astype(float),
        "mAP": ranking.query_average_precisions[scored],
    }
    count = int(scored.sum())
    return {
        name: float(np.std(values, ddof=1) / np.sqrt(count)) if count > 1 else float("nan")
        for name, values in per_query.items()
    }


def write_json(path, data):
    return files.write_json(path, data)


def metrics_table(metrics, title="Evaluation"):
    errors = metrics.get("standard_errors", {})

    def with_error(key):
        return percent_with_error(metrics[key], errors.get(key))

    rows = [
        ("rank-1", with_error("rank1")),
        ("rank-5", percent(metrics["rank5"])),
        ("rank-10", percent(metrics["rank10"])),
        ("mAP", with_error("mAP")),
        ("mINP", percent(metrics["mINP"])),
        ("queries", f"{metrics['num_valid_queries']} scored, {metrics['num_skipped_queries']} skipped"),
        ("gallery", str(metrics["num_gallery"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)] + [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def percent(fraction, digits=1):
    """A fraction as a percentage string: 0.4932 -> "49.3%"."""
    return f"{100 * fraction:.{digits}f}%"


def percent_with_error(fraction, standard_error=None):
    """A fraction and its standard error in percentage points: "49.3% ± 5.8"."""
    if standard_error is None or not np.isfinite(standard_error):
        return percent(fraction)
    return f"{percent(fraction)} ± {100 * standard_error:.1f}"


def save_figure(figure, path, dpi=120):
    return files.write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=dpi, format="png"))


def plot_cmc(cmc, label=None):
    """CMC curve, ranks 1..len(cmc); returns the Figure."""
    figure, axes = _subplots(figsize=(6, 4))
    axis = axes[0, 0]
    ranks = np.arange(1, len(cmc) + 1)
    axis.plot(ranks, 100 * np.asarray(cmc), marker="o", markersize=3, label=label)
    axis.set(xlabel="rank", ylabel="matching rate (%)", title="CMC curve", ylim=(0, 101), xlim=(1, len(cmc)))
    axis.grid(alpha=0.3)
    if label:
        axis.legend()
    figure.tight_layout()
    return figure


def _framed(path, color, size, width=4):
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
        axes[row, 0].imshow(_framed(query.path, None, size))
        axes[row, 0].set_title(f"query\nid {identity_names.get(query.pid, query.pid)} cam {query.camid}", fontsize=8)
        for column in range(top_k):
            axis = axes[row, column + 1]
            if column < len(ranked):
                match = gallery_samples[ranked[column]]
                color = "green" if match.pid == query.pid else "red"
                axis.imshow(_framed(match.path, color, size))
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
# strong-baseline training model (Keras names them after the model's outputs).
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
    components = {key: label for key, label in _COMPONENT_LOSSES.items() if key in history}
    loss_axis.plot(epochs, history["loss"], marker="o", markersize=3, label="total" if components else None)
    for key, label in components.items():
        loss_axis.plot(epochs, history[key], marker="o", markersize=2, label=label)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Training loss")
    loss_axis.grid(alpha=0.3)
    if components:
        loss_axis.legend(fontsize=8)
        # Keras logs each part unweighted: the center loss of a 2048-d feature is thousands
        # while the triplet loss is below 1, so only a log scale shows every curve move.
        parts = np.concatenate([history[key] for key in ("loss", *components)])
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


def write_training_curves(history, output_dir, split_name="query / gallery"):
    """Writes loss.png and retrieval_per_epoch.png (when evaluation ran); returns the paths."""
    figures = {
        LOSS_FIGURE: plot_loss_curves(history),
        RETRIEVAL_PER_EPOCH_FIGURE: plot_retrieval_per_epoch(history, split_name),
    }
    return [save_figure(figure, Path(output_dir) / name) for name, figure in figures.items() if figure is not None]


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


def write_threshold(threshold, split_name, metric, output_dir, positive, negative):
    """Writes threshold.json (what search.py uses) and threshold.png; returns the record."""
    record = {**dataclasses.asdict(threshold), "split": split_name, "metric": metric}
    write_json(Path(output_dir) / THRESHOLD, record)
    figure = plot_pair_distances(positive, negative, {f"threshold ({split_name})": threshold})
    save_figure(figure, Path(output_dir) / THRESHOLD_FIGURE)
    return record


def search_table(answers, identity_names=None):
    """What search.py query prints: per query, its verdict and top-k with distances."""
    identity_names = identity_names or {}
    lines = []
    for answer in answers:
        verdict = "match" if answer.match else "no match"
        lines.append(f"{answer.query}: {verdict} (threshold {answer.threshold:.4f})")
        for rank, result in enumerate(answer.results, start=1):
            who = "" if result.pid is None else f"  id {identity_names.get(result.pid, result.pid)}"
            camera = "" if result.camid is None else f"  cam {result.camid}"
            lines.append(f"  {rank:>3}  {result.distance:.4f}  {result.path}{who}{camera}")
    return "\n".join(lines)


# Frames of plot_search_answers: right / wrong when both identities are known, else whether
# the result was accepted; what each means is written on the figure.
SEARCH_MARKS = {
    "green": "green: the query's identity (right)",
    "red": "red: another identity (wrong)",
    "blue": "blue: identity unknown, closer than the threshold (accepted)",
}


def middle_ellipsis(text, width):
    """`text` in at most `width` characters: a longer one loses its middle to "…" and keeps
    its start and, longer, its end (where a file name carries identity, camera and frame)."""
    if len(text) <= width:
        return text
    tail = (2 * (width - 1)) // 3
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def wrapped_name(name, line_width=26, max_lines=2):
    """A file name cut into lines of `line_width` characters, at most `max_lines` of them
    (shortened in the middle beyond that)."""
    name = middle_ellipsis(name, line_width * max_lines)
    return "\n".join(name[start : start + line_width] for start in range(0, len(name), line_width))


def _mark(axis, colour):
    """A frame drawn around an image axis (an artist, so figures can be checked without pixels)."""
    from matplotlib.patches import Rectangle

    frame = Rectangle((0, 0), 1, 1, transform=axis.transAxes, fill=False, edgecolor=colour, linewidth=3)
    frame.set_gid(f"mark-{colour}")
    axis.add_patch(frame)


def plot_search_answers(answers, identity_names=None, top_k=None):
    """Each query beside its top-k gallery images, nearest first, with distances.

    A result is framed green when it shows the query's identity and red when another, if both
    identities are known (`answer.correct()`: Market-1501-style names, or an index that takes
    identities from folder names); a result of unknown identity is framed blue when it is
    closer than the threshold (accepted as the same person), and "< t" marks every accepted
    distance. A legend says what the colours that appear mean. Query file names are shown
    whole, wrapped, or shortened in the middle keeping their end.

    Args:
      answers: `SearchAnswer`s of `siamese_reid.search`.
      identity_names: pid -> name, for identities read from folder names.
      top_k: results shown per query (default: all).

    Returns:
      The matplotlib Figure.
    """
    identity_names = identity_names or {}
    top_k = top_k or max(len(answer.results) for answer in answers)
    size, rows = (128, 64), len(answers)
    figure = Figure(figsize=(1.4 * top_k + 2.2, 2.7 * rows + 0.5))
    # the query column is wider: its title holds the file name
    axes = figure.subplots(rows, top_k + 1, squeeze=False, gridspec_kw={"width_ratios": [1.6] + [1] * top_k})
    used = set()
    for row, answer in enumerate(answers):
        verdict = "match" if answer.match else "no match"
        who = "" if answer.query_pid is None else f"\nid {identity_names.get(answer.query_pid, answer.query_pid)}"
        axes[row, 0].imshow(_framed(answer.query, None, size))
        title = f"{wrapped_name(Path(answer.query).name)}{who}\n{verdict} (t={answer.threshold:.3f})"
        axes[row, 0].set_title(title, fontsize=7)
        for column, (result, correct) in enumerate(zip(answer.results[:top_k], answer.correct(), strict=False)):
            axis = axes[row, column + 1]
            axis.imshow(_framed(result.path, None, size))
            accepted = result.distance < answer.threshold
            colour = {True: "green", False: "red"}.get(correct, "blue" if accepted else None)
            if colour is not None:
                _mark(axis, colour)
                used.add(colour)
            name = identity_names.get(result.pid, result.pid)
            label = f"id {name}" if result.pid is not None else middle_ellipsis(Path(result.path).name, 16)
            axis.set_title(f"{column + 1}: {label}\nd={result.distance:.3f}{' < t' if accepted else ''}", fontsize=7)
        for axis in axes[row]:
            axis.axis("off")
    legend_rows = _search_legend(figure, used)
    width, height = figure.get_size_inches()
    figure.tight_layout(rect=(0, (0.1 + 0.18 * legend_rows) / height, 1, 1 - 0.3 / height))
    return figure


def _search_legend(figure, colours_used):
    """The legend of the marks that appear, in one row when the figure is wide enough for it
    (about 0.07 inch per character at 7 points), else one mark per row; returns its rows."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="none", edgecolor=colour, linewidth=2, label=meaning)
        for colour, meaning in SEARCH_MARKS.items()
        if colour in colours_used
    ]
    one_row = sum(0.07 * len(handle.get_label()) + 0.6 for handle in handles) < figure.get_size_inches()[0]
    if handles:
        columns = len(handles) if one_row else 1
        figure.legend(handles=handles, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    unmarked = "green" not in colours_used and "red" not in colours_used
    caption = "identities unknown: results are not marked right or wrong; " if unmarked else ""
    figure.suptitle(f"{caption}'< t': closer than the threshold t (accepted as the same person)", fontsize=8)
    return 0 if not handles else 1 if one_row else len(handles)


def distance_in_words(distance):
    """metrics.json's protocol.distance in words: "euclidean", or the name with its parameters."""
    details = ", ".join(f"{key}={value}" for key, value in distance.items() if key != "name")
    return f"{distance['name']} ({details})" if details else distance["name"]


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


def write_report(evaluation, query, gallery, settings, output_dir, extra=None, identity_names=None):
    """Writes metrics.json, cmc.png, retrieval_examples.png, the embeddings and per-query APs.

    Args:
      evaluation: an `Evaluation` of `query` against `gallery`.
      query, gallery: lists of `Sample`.
      settings: the `EvaluationConfig` section the evaluation used.
      output_dir: folder the files are written to.
      extra: more entries for metrics.json (e.g. training time).
      identity_names: pid -> name, to label figures of folder-per-identity datasets.

    Returns:
      The metrics dictionary.
    """
    from siamese_reid.evaluation.embeddings import save_embeddings  # imports TensorFlow

    output_dir = Path(output_dir)
    metrics = ranking_metrics(
        evaluation.ranking, len(query), len(gallery), protocol_record(settings, evaluation.distance)
    )
    metrics.update(extra or {})
    write_json(output_dir / METRICS, metrics)
    save_figure(plot_cmc(evaluation.ranking.cmc), output_dir / CMC_FIGURE)
    if settings.num_examples:
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(query), min(settings.num_examples, len(query)), replace=False)
        figure = plot_retrieval_examples(
            sorted(chosen.tolist()),
            query,
            gallery,
            evaluation.rows,
            identity_names=identity_names,
            chosen="drawn at random (seed 0)",
        )
        save_figure(figure, output_dir / RETRIEVAL_EXAMPLES_FIGURE, dpi=110)
    save_embeddings(output_dir / QUERY_EMBEDDINGS, evaluation.query_features, query)
    save_embeddings(output_dir / GALLERY_EMBEDDINGS, evaluation.gallery_features, gallery)
    average_precisions = evaluation.ranking.query_average_precisions
    files.write_atomically(output_dir / QUERY_AVERAGE_PRECISIONS, lambda path: _save_array(path, average_precisions))
    logger.info(metrics_table(metrics))
    return metrics


def _save_array(path, array):
    with open(path, "wb") as handle:
        np.save(handle, array)


def log_data_summary(summary, warnings, warnings_path):
    """Logs the dataset summary and the first data warnings, as train.py and evaluate.py show them."""
    logger.info("dataset summary:")
    for name, counts in summary.items():
        logger.info(
            f"  {name:<18} {counts['images']:>6} images  {counts['identities']:>5} identities  "
            f"{counts['cameras']:>2} cameras  {counts['single_image_identities']:>4} single-image identities"
            + (f"  {counts['distractor_images']} distractors" if counts["distractor_images"] else "")
            + (f"  {counts['junk_images']} junk" if counts["junk_images"] else "")
        )
    if warnings:
        logger.info(f"warning: {len(warnings)} data problem(s), listed in {warnings_path}")
        for line in warnings[:5]:
            logger.info(f"  {line}")
