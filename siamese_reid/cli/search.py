"""search.py: index a folder of images with a trained run's model, then query it."""

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
    index = commands.add_parser("index", help="embed every image under folders into an index (incremental)")
    index.add_argument("--run", required=True, help="the training run whose model embeds the images")
    index.add_argument("--checkpoint", default="last", choices=("last", "best"))
    index.add_argument("--images", required=True, nargs="+", metavar="DIR", help="folders searched recursively")
    index.add_argument("--index", required=True, metavar="INDEX_DIR", help="the index folder (created or updated)")
    index.add_argument(
        "--identity-from-folder",
        action="store_true",
        help="take each image's parent folder name as its identity (otherwise Market-1501 names, or none)",
    )
    query = commands.add_parser("query", help="find the nearest gallery images of query images")
    query.add_argument("--index", required=True, metavar="INDEX_DIR")
    query.add_argument("--top-k", type=int, default=10)
    query.add_argument("--json", action="store_true", help="print one JSON array of answers")
    query.add_argument("--save", default=None, metavar="FIG.png", help="draw each query beside its top-k")
    query.add_argument("--threshold", type=float, default=None, help="override the run's calibrated threshold")
    query.add_argument("images", nargs="+", metavar="IMAGE")
    return parser.parse_args(argv)


def _index(arguments):
    from siamese_reid.search import update_index

    summary = update_index(
        arguments.run, arguments.images, arguments.index, arguments.checkpoint, arguments.identity_from_folder
    )
    for path, reason in summary.skipped:
        print(f"skipped '{path}': {reason}", file=sys.stderr)
    print(summary.line())
    return 0


def _query(arguments):
    from siamese_reid import reporting
    from siamese_reid.search import Searcher

    searcher = Searcher(arguments.index, arguments.threshold)
    answers, errors = searcher.search(arguments.images, arguments.top_k)
    for message in errors.values():
        print(f"error: {message}", file=sys.stderr)
    if arguments.json:
        print(json.dumps([answer.to_json() for answer in answers]))
    elif answers:
        print(reporting.search_table(answers, searcher.index.identity_names))
    if arguments.save and answers:
        reporting.save_figure(reporting.plot_search_answers(answers, searcher.index.identity_names), arguments.save)
        print(f"saved {arguments.save}", file=sys.stderr if arguments.json else sys.stdout)
    return 1 if errors else 0


@exit_on_user_error
def main(argv=None):
    arguments = _arguments(argv)
    if arguments.command == "query" and arguments.top_k < 1:
        raise ReIDError(f"--top-k must be at least 1, got {arguments.top_k}")
    if arguments.command == "query" and arguments.threshold is not None and not math.isfinite(arguments.threshold):
        # nan would answer "no match" to every query, inf "match" to every one
        raise ReIDError(f"--threshold must be a finite distance, got {arguments.threshold}")
    import_tensorflow_quietly()
    return _index(arguments) if arguments.command == "index" else _query(arguments)
