"""python -m siamese_reid.import_torchreid: a torchreid checkpoint -> a run folder."""

import argparse

from siamese_reid.cli.common import exit_on_user_error
from siamese_reid.console import import_tensorflow_quietly
from siamese_reid.errors import ReIDError


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m siamese_reid.import_torchreid",
        description="Turn a torchreid OSNet checkpoint (.pth) into a run folder that export.py, search.py and "
        "evaluate.py use, without training. The file is read without PyTorch and without running its pickled code.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="torchreid .pth file (state dict or checkpoint dict)")
    parser.add_argument("--arch", required=True, help="its architecture: osnet_x1_0, osnet_x0_75, osnet_x0_5, ...")
    parser.add_argument("--output", required=True, metavar="RUN_DIR", help="the run folder to create (must not exist)")
    validation = parser.add_argument_group(
        "validation data (optional): fits the 'no match' threshold search.py answers with (threshold.json)"
    )
    # both spellings: train.py and evaluate.py write --query_dir, most tools --query-dir
    validation.add_argument(
        "--validation-root", "--validation_root", default=None, metavar="DIR", help="a dataset root (see --layout)"
    )
    validation.add_argument(
        "--layout", default="market", help="layout of --validation-root: market (default), msmt17, cuhk03_np, folders"
    )
    validation.add_argument(
        "--query-dir", "--query_dir", default=None, metavar="DIR", help="query images (Market-1501 names)"
    )
    validation.add_argument(
        "--gallery-dir", "--gallery_dir", default=None, metavar="DIR", help="gallery images (Market-1501 names)"
    )
    return parser.parse_args(argv)


def _validation(arguments):
    from siamese_reid.pretrained import ValidationData

    if arguments.validation_root is None and arguments.query_dir is None and arguments.gallery_dir is None:
        return None
    if arguments.validation_root is None and (arguments.query_dir is None or arguments.gallery_dir is None):
        raise ReIDError("give --validation-root, or both --query-dir and --gallery-dir")
    return ValidationData(arguments.validation_root, arguments.layout, arguments.query_dir, arguments.gallery_dir)


@exit_on_user_error
def main(argv=None):
    arguments = _arguments(argv)
    import_tensorflow_quietly()
    from siamese_reid.pretrained import import_torchreid_checkpoint

    result = import_torchreid_checkpoint(arguments.checkpoint, arguments.arch, arguments.output, _validation(arguments))
    source = f"{result.num_classes}-class classifier dropped" if result.num_classes else "no classifier"
    print(f"imported {arguments.checkpoint} ({arguments.arch}, {source}) into {result.run_dir}")
    if result.validation_metrics is not None:
        from siamese_reid.formatting import percent

        metrics = result.validation_metrics
        print(f"validation: rank-1 {percent(metrics['rank1'])}  mAP {percent(metrics['mAP'])}")
    if result.threshold is None:
        print("no threshold.json: search.py query needs --threshold (or import again with validation data)")
    print(f"next: python export.py --run {result.run_dir}   |   python search.py index --run {result.run_dir} ...")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
