"""search.py: index folders of images with a trained run's model, query the index, describe it."""

import argparse
import json
import math
import sys

from siamese_reid.cli.common import exit_on_user_error
from siamese_reid.console import import_tensorflow_quietly
from siamese_reid.errors import ReIDError


def _arguments(argv):
    parser = argparse.ArgumentParser(description="Search your own images with a trained re-ID model.")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser(
        "index", help="add folders of images to an index, or refresh every folder it holds (incremental)"
    )
    index.add_argument("--run", default=None, help="the training run whose model embeds the images (new index)")
    index.add_argument("--checkpoint", default=None, choices=("last", "best"), help="default: the index's, or last")
    index.add_argument("--images", nargs="+", default=[], metavar="DIR", help="folders to add, searched recursively")
    index.add_argument(
        "--remove", nargs="+", default=[], metavar="DIR", help="indexed folders whose images leave the index"
    )
    index.add_argument("--index", required=True, metavar="INDEX_DIR", help="the index folder (created or updated)")
    index.add_argument(
        "--identity-from-folder",
        action="store_true",
        default=None,
        help="take each image's parent folder name as its identity (otherwise Market-1501 names, or none)",
    )
    query = commands.add_parser("query", help="find the nearest gallery images of query images")
    query.add_argument("--index", required=True, metavar="INDEX_DIR")
    query.add_argument("--top-k", type=int, default=10)
    query.add_argument("--json", action="store_true", help="print one JSON array of answers")
    query.add_argument("--save", default=None, metavar="FIG.png", help="draw each query beside its top-k")
    query.add_argument("--threshold", type=float, default=None, help="override the run's calibrated threshold")
    query.add_argument("images", nargs="+", metavar="IMAGE")
    info = commands.add_parser("info", help="the index's folders and image counts, model and last update")
    info.add_argument("--index", required=True, metavar="INDEX_DIR")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def demo_warning(run_dir):
    return (
        f"warning: run '{run_dir}' was trained on the built-in demo dataset (synthetic people): on real "
        "photos its distances mean little and its threshold, fitted on the demo, accepts nearly everything; "
        "train a run on your own images"
    )


def _index(arguments):
    from siamese_reid.search import update_index

    summary = update_index(
        arguments.run,
        arguments.images,
        arguments.index,
        arguments.checkpoint,
        arguments.identity_from_folder,
        remove=arguments.remove,
    )
    for path, reason in summary.skipped:
        print(f"skipped '{path}': {reason}", file=sys.stderr)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if summary.trained_on_demo:
        print(demo_warning(arguments.run or _run_of(arguments.index)), file=sys.stderr)
    print(summary.line())
    return 0


def _run_of(index_dir):
    from siamese_reid.search import index as index_files

    return index_files.read_header(index_dir)["run"]["dir"]


def _query(arguments):
    from siamese_reid.figures import save_figure
    from siamese_reid.search import Searcher
    from siamese_reid.search.presentation import plot_search_answers, search_table

    searcher = Searcher(arguments.index, arguments.threshold)
    if searcher.trained_on_demo:
        print(demo_warning(searcher.index.header["run"]["dir"]), file=sys.stderr)
    answers, errors = searcher.search(arguments.images, arguments.top_k)
    for message in errors.values():
        print(f"error: {message}", file=sys.stderr)
    if arguments.json:
        print(json.dumps([answer.to_json() for answer in answers]))
    elif answers:
        print(search_table(answers, searcher.index.identity_names))
    if arguments.save and answers:
        save_figure(plot_search_answers(answers, searcher.index.identity_names), arguments.save)
        print(f"saved {arguments.save}", file=sys.stderr if arguments.json else sys.stdout)
    return 1 if errors else 0


def _info(arguments):
    from siamese_reid.search.info import index_info

    info = index_info(arguments.index)
    if arguments.json:
        print(json.dumps(info.to_json()))
    else:
        print("\n".join(info.lines()))
    if info.trained_on_demo:
        print(demo_warning(info.run), file=sys.stderr if arguments.json else sys.stdout)
    return 0


@exit_on_user_error
def main(argv=None):
    arguments = _arguments(argv)
    if arguments.command == "query" and arguments.top_k < 1:
        # said before the index and its model load (the library checks top_k again for its callers)
        raise ReIDError(f"--top-k must be at least 1, got {arguments.top_k}")
    if arguments.command == "query" and arguments.threshold is not None and not math.isfinite(arguments.threshold):
        # nan would answer "no match" to every query, inf "match" to every one
        raise ReIDError(f"--threshold must be a finite distance, got {arguments.threshold}")
    if arguments.command == "info":
        return _info(arguments)  # reads files only: no TensorFlow
    import_tensorflow_quietly()
    return _index(arguments) if arguments.command == "index" else _query(arguments)
