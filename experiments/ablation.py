"""Ablation of the strong-baseline tricks (Luo et al. 2019) on a validation split.

Trains each named recipe variant (today's recipe, today's plus one trick, all tricks) with the
library workflow train.py runs (`siamese_reid.experiment`) on one dataset, and records each
variant's rank-1 / mAP on the VALIDATION split, identities held out of training
(`data.validation_fraction`), which is what a recipe is chosen on, and its wall time. The
test split is scored only with --report-test: without it the runs are trained with
`evaluation.score_test: false`, so they report on validation and never see a test score.

    python experiments/ablation.py --data-root ../shared/data/market1501-sample
    python experiments/ablation.py --data-root DATA --variants today,+id_loss --epochs 20
    python experiments/ablation.py --epochs 1 --set demo.num_train_identities=12   # the built-in demo
    python experiments/ablation.py --data-root DATA --split-seeds 0,1,2 --variants today,global_pooling

--split-seeds trains every variant once per validation split (data.split_seed: which training
identities are held out) and reports the mean over the splits: one split of a small dataset
holds few queries (15 on the Market sample), too few to rank recipes a few points apart. (With
layout: folders and only data.root, the split seed also redraws the test split.)

Writes experiments/results/ablation/<timestamp>/: one run folder per variant, and ablation.csv,
ablation.md and ablation.json, rewritten after every variant so an interrupted ablation keeps
what it finished.

The "+multistep" milestones are at 40/120 and 70/120 of the run's epochs, the reference's
proportions (epochs 40 and 70 of 120). AdamW is not a variant: the strong baseline decays
weights with Adam's L2 penalty ("+weight_decay"), and decoupled decay 0.0005 at learning rate
0.0003 shrinks the weights by 1.5e-7 per step, which changes nothing.
"""

import argparse
import csv
import io
import os
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class Variant(NamedTuple):
    description: str
    overrides: tuple
    default: bool = True  # run when --variants is not given


# The multistep milestones depend on the run's epochs: filled in by `variant_overrides`.
MULTISTEP = ("training.schedule=multistep", "training.lr_gamma=0.1", "MILESTONES")
ID_LOSS = ("loss.id_weight=1.0", "loss.label_smoothing=0.1")
BNNECK = (*ID_LOSS, "loss.triplet_feature=pre_bnneck")
CENTER = ("loss.center_weight=0.0005", "loss.center_learning_rate=0.5")
ERASING_MEAN = ("augment.random_erasing=true", "augment.erasing_probability=0.5", "augment.erasing_fill=mean")
WEIGHT_DECAY = ("training.optimizer=adam", "training.weight_decay=0.0005")
ALL_TRICKS = (*BNNECK, *CENTER, *ERASING_MEAN, *WEIGHT_DECAY, *MULTISTEP)
RESNET50 = ("model.backbone=resnet50",)

VARIANTS = {
    "today": Variant("today's recipe (config.yaml)", ()),
    "+id_loss": Variant("ID loss, label smoothing 0.1, on the feature after the BNNeck", ID_LOSS),
    "+bnneck": Variant("+id_loss, triplet loss on the feature before the BNNeck (Luo et al.'s BNNeck)", BNNECK),
    "+center": Variant("center loss, weight 0.0005 (centres: SGD, rate 0.5)", CENTER),
    "+erasing_mean": Variant("random erasing, p 0.5, filled with the ImageNet mean pixel", ERASING_MEAN),
    "+weight_decay": Variant("Adam with L2 weight decay 0.0005 (the reference's optimizer)", WEIGHT_DECAY),
    "+multistep": Variant("multi-step rate: x0.1 at 40/120 and 70/120 of the epochs", MULTISTEP),
    "strong_baseline": Variant("all of the above", ALL_TRICKS),
    # Today's recipe pools 4 horizontal stripes apart (PCB-style part features) since this was measured.
    "global_pooling": Variant("1 stripe: global pooling (the pooling before stripes)", ("model.stripes=1",), False),
    "stripes8": Variant("8 horizontal stripes pooled apart instead of 4", ("model.stripes=8",), False),
    # Spending the rest of the CPU budget (about 2x the 150-epoch 64x32 run), three ways; 96x48
    # became today's size.
    "size64x32": Variant("64x32 input (the size before 96x48)", ("data.image_height=64", "data.image_width=32"), False),
    "+epochs300": Variant("300 epochs", ("training.epochs=300",), False),
    "+size128x64_epochs75": Variant(
        "128x64 input (the Market crops' own size, 4x the pixels), 75 epochs",
        ("data.image_height=128", "data.image_width=64", "training.epochs=75"),
        False,
    ),
    "lr1e-3": Variant("learning rate 0.001 instead of 0.0003", ("training.learning_rate=0.001",), False),
    "soft_margin": Variant("soft-margin batch-hard triplet loss (Hermans et al.'s choice)", ("loss.soft=true",), False),
    "resnet50": Variant("today's recipe on ResNet-50", RESNET50, default=False),
    "resnet50+last_stride": Variant("ResNet-50, last stride 1", (*RESNET50, "model.last_stride=1"), default=False),
    "resnet50+strong_baseline": Variant(
        "ResNet-50, last stride 1, global pooling, all of the above",
        (*RESNET50, "model.last_stride=1", "model.stripes=1", *ALL_TRICKS),
        default=False,
    ),
}


def variant_overrides(variant, epochs):
    """The variant's `section.key=value` overrides, its milestones set for `epochs`."""
    milestones = sorted({max(1, round(epochs * fraction)) for fraction in (40 / 120, 70 / 120)})
    return [f"training.lr_milestones={milestones}" if item == "MILESTONES" else item for item in variant.overrides]


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="dataset root (default: the config's data.root, else the demo)")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value for all")
    parser.add_argument("--variants", help=f"comma-separated names (default: the default ones of {list(VARIANTS)})")
    parser.add_argument("--epochs", type=int, help="training.epochs of every variant (default: the config's)")
    parser.add_argument("--validation-fraction", type=float, default=0.3, help="data.validation_fraction (> 0)")
    parser.add_argument("--split-seeds", default="0", help="comma-separated data.split_seed values (default: 0)")
    parser.add_argument("--report-test", action="store_true", help="also record the test split's numbers")
    parser.add_argument("--output_dir", default="experiments/results/ablation")
    arguments = parser.parse_args()
    if not 0 < arguments.validation_fraction <= 0.5:
        parser.error("--validation-fraction must be in (0, 0.5]: variants are compared on the validation split")
    names = arguments.variants.split(",") if arguments.variants else [n for n, v in VARIANTS.items() if v.default]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid names: {list(VARIANTS)}")
    if any(override.startswith("evaluation.score_test") for override in arguments.overrides):
        parser.error("--report-test decides evaluation.score_test (false without it): do not --set it")
    if arguments.epochs is not None and arguments.epochs < 1:
        parser.error("--epochs must be at least 1")
    arguments.variants = names
    try:
        arguments.split_seeds = [int(seed) for seed in arguments.split_seeds.split(",")]
    except ValueError:
        parser.error(f"--split-seeds must be comma-separated integers, got {arguments.split_seeds!r}")
    return arguments


def base_overrides(arguments):
    """What every variant shares: the user's --set, the dataset, the split, the epochs."""
    # variants compare at equal epochs: a time budget would give each the length its own timing
    # fits (a recipe's training.time_budget_hours applies only where the user's --set gives it)
    overrides = ["training.time_budget_hours=0", *arguments.overrides]
    if arguments.data_root:
        overrides.append(f"data.root={arguments.data_root}")
    overrides.append(f"data.validation_fraction={arguments.validation_fraction}")
    # without --report-test the runs never score test: a recipe chosen on them cannot have seen it
    overrides.append(f"evaluation.score_test={'true' if arguments.report_test else 'false'}")
    if arguments.epochs is not None:
        overrides.append(f"training.epochs={arguments.epochs}")
    return overrides


def train_variant(name, shared, own, split_seed, arguments, output_dir):
    """Trains one variant (the `shared` overrides, then its `own`) on validation split
    `split_seed` into output_dir/<name>_split<seed>; returns its result row."""
    import json

    import keras

    from siamese_reid import experiment
    from siamese_reid.config import load_config
    from siamese_reid.errors import ReIDError
    from siamese_reid.runs import RUN_INFO

    row = {"variant": name, "split_seed": split_seed, "description": VARIANTS[name].description}
    row["overrides"] = " ".join(own)
    keras.backend.clear_session()  # each variant starts from a fresh graph and global state
    started = time.time()
    try:
        run_name = f"{name.replace('+', 'plus_')}_split{split_seed}"
        config = load_config(
            arguments.config, [*shared, *own, f"data.split_seed={split_seed}", f"output.run_name={run_name}"]
        )
        metrics, run_dir = experiment.train(config, output_dir)
    except ReIDError as error:
        return {**row, "error": str(error)}
    validation = metrics["validation"]
    row |= {
        "val_rank1": validation["rank1"],
        "val_rank1_se": validation["standard_errors"]["rank1"],
        "val_mAP": validation["mAP"],
        "val_mAP_se": validation["standard_errors"]["mAP"],
        "wall_seconds": round(time.time() - started, 1),
        "precision": json.loads((run_dir / RUN_INFO).read_text())["precision"]["policy"],
        "run_dir": str(run_dir),
    }
    if arguments.report_test:
        assert metrics["split"] == "test", metrics["split"]  # --report-test sets evaluation.score_test
        row |= {"test_rank1": metrics["rank1"], "test_mAP": metrics["mAP"]}
    return row


def mean_over_splits(split_rows):
    """One row for a variant from its rows on several validation splits: mean scores, their
    standard error, per-split mAPs and mean wall time; a failed split is reported, naming it.

    The standard error of the mean is the spread between splits, stdev(ddof=1) / sqrt(splits):
    which identities are held out moves a score far more than query sampling within a split
    does (37% to 93% val mAP for one recipe on the Market sample), and the splits overlap (they
    draw from the same training identities), so the query-sampling errors of the splits do not
    combine as independent ones. With one split it is that split's query-sampling error.
    Compare variants split by split (`val_mAP_per_split`): a paired difference is far less noisy.
    """
    failed = [row for row in split_rows if "error" in row]
    if failed:
        return {**failed[0], "error": f"split {failed[0]['split_seed']}: {failed[0]['error']}"}
    first, count = split_rows[0], len(split_rows)
    row = {key: first[key] for key in ("variant", "description", "overrides")}
    row["split_seeds"] = " ".join(str(r["split_seed"]) for r in split_rows)
    for metric in ("val_rank1", "val_mAP", "test_rank1", "test_mAP"):
        if metric not in first:
            continue
        values = [r[metric] for r in split_rows]
        row[metric] = sum(values) / count
        if count > 1:
            variance = sum((value - row[metric]) ** 2 for value in values) / (count - 1)
            row[f"{metric}_se"] = (variance / count) ** 0.5
        elif f"{metric}_se" in first:
            row[f"{metric}_se"] = first[f"{metric}_se"]
    row["val_mAP_per_split"] = " ".join(f"{r['val_mAP']:.3f}" for r in split_rows)
    row["wall_seconds"] = round(sum(r["wall_seconds"] for r in split_rows) / count, 1)
    row["precision"] = first["precision"]
    row["run_dirs"] = " ".join(r["run_dir"] for r in split_rows)
    row["splits"] = split_rows
    return row


def markdown_table(rows, report_test):
    from siamese_reid.formatting import percent, percent_with_error

    columns = ["variant", "val rank-1", "val mAP", "val mAP per split", "wall time per run"]
    columns += ["test rank-1", "test mAP"] if report_test else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed: {row['error']} |" + " |" * (len(columns) - 2))
            continue
        cells = [
            row["variant"],
            percent_with_error(row["val_rank1"], row["val_rank1_se"]),
            percent_with_error(row["val_mAP"], row["val_mAP_se"]),
            " / ".join(percent(float(value)) for value in row["val_mAP_per_split"].split()),
            f"{row['wall_seconds']:.0f} s",
        ]
        if report_test:
            cells += [percent(row["test_rank1"]), percent(row["test_mAP"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(rows, arguments, output_dir):
    from siamese_reid.files import write_json, write_text

    # The csv has a line per variant; ablation.json also keeps each split's own row ("splits").
    flat_rows = [{key: value for key, value in row.items() if key != "splits"} for row in rows]
    fields = list(dict.fromkeys(key for row in flat_rows for key in row))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat_rows)
    write_text(output_dir / "ablation.csv", table.getvalue())
    write_text(output_dir / "ablation.md", markdown_table(rows, arguments.report_test))
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shared_overrides": base_overrides(arguments),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "split_for_choosing": "validation",
        "rows": rows,
    }
    write_json(output_dir / "ablation.json", record)


def main():
    arguments = parse_arguments()

    from siamese_reid.config import load_config
    from siamese_reid.console import show_messages
    from siamese_reid.errors import ReIDError
    from siamese_reid.runs import create_run_dir

    show_messages()  # each run's progress, as train.py shows it

    shared = base_overrides(arguments)
    try:
        epochs = load_config(arguments.config, shared).training.epochs  # a bad --set fails before any training
    except ReIDError as error:
        sys.exit(f"error: {error}")
    output_dir = create_run_dir(arguments.output_dir)
    rows = []
    for name in arguments.variants:
        own = variant_overrides(VARIANTS[name], epochs)
        split_rows = []
        for split_seed in arguments.split_seeds:
            print(
                f"\n=== {name}, validation split {split_seed}: {VARIANTS[name].description}\n"
                f"    {' '.join(own) or '(no overrides)'}",
                flush=True,
            )
            split_rows.append(train_variant(name, shared, own, split_seed, arguments, output_dir))
            write_results([*rows, mean_over_splits(split_rows)], arguments, output_dir)
        rows.append(mean_over_splits(split_rows))
    print(
        f"\nvalidation splits {arguments.split_seeds} ({arguments.validation_fraction:.0%} of the training "
        "identities held out, mean over splits):\n"
    )
    print(markdown_table(rows, arguments.report_test))
    print(f"results in {output_dir}")


if __name__ == "__main__":
    main()
