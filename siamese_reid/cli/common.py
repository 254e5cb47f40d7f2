"""What the entry points share: arguments, the config they describe, the library's messages
shown, exit codes."""

import functools
import json
import sys
from pathlib import Path

from siamese_reid.config import load_config
from siamese_reid.console import show_messages
from siamese_reid.errors import ArgumentError, ReIDError


def add_common_arguments(parser):
    parser.add_argument("--config", default=None, help="YAML config (default: config.yaml if present)")
    parser.add_argument("--train_dir", default=None, help="training images (overrides data.train_dir)")
    parser.add_argument("--query_dir", default=None, help="query images (overrides data.query_dir)")
    parser.add_argument("--gallery_dir", default=None, help="gallery images (overrides data.gallery_dir)")
    parser.add_argument("--output_dir", default=None, help="where the run is written")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key; repeatable",
    )


def default_config_path():
    """config.yaml in the working folder, else the one beside the script that was run (the
    repository's), so `python path/to/train.py` from elsewhere still reads it."""
    for folder in (Path.cwd(), Path(sys.argv[0]).resolve().parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def overrides_from_arguments(arguments):
    """The --set overrides, then the data folder flags as overrides of data.*_dir."""
    overrides = list(arguments.overrides)
    for flag in ("train_dir", "query_dir", "gallery_dir"):
        value = getattr(arguments, flag, None)
        if value is not None:
            overrides.append(f"data.{flag}={json.dumps(str(value))}")
    return overrides


def config_from_arguments(arguments, base_config_path=None):
    """Loads the config file and applies --set overrides and the data folder flags; says which
    file was read."""
    path = arguments.config or base_config_path or default_config_path()
    print(f"config: {path}" if path else "config: built-in defaults (no config.yaml found)")
    return load_config(path, overrides_from_arguments(arguments))


# the library names its arguments; the command lines name the flags that set them
ARGUMENT_FLAGS = {
    "top_k": "--top-k",
    "threshold": "--threshold",
    "run_dir": "--run",
    "folders": "--images",
    "output_dir": "--output",
}


def exit_on_user_error(main):
    """Runs `main` with the library's messages shown on stdout; a ReIDError becomes one line on
    stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(argv=None):
        show_messages()
        try:
            return main(argv)
        except ArgumentError as error:  # the library names its argument; a user typed a flag
            print(f"error: {error.message_for(ARGUMENT_FLAGS.get(error.argument, error.argument))}", file=sys.stderr)
            return 2
        except ReIDError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped
