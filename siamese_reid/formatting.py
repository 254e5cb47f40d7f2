"""Numbers and summaries as a person reads them: the only module that formats fractions as
percentages (metrics stay fractions everywhere else)."""

import logging

import numpy as np

logger = logging.getLogger(__name__)


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


def distance_in_words(distance):
    """metrics.json's protocol.distance in words: "euclidean", or the name with its parameters."""
    details = ", ".join(f"{key}={value}" for key, value in distance.items() if key != "name")
    return f"{distance['name']} ({details})" if details else distance["name"]


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
