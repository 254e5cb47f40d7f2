"""What train.py and evaluate.py share: arguments, the config they describe, exit codes."""

import functools
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from siamese_reid.config import load_config
from siamese_reid.errors import ReIDError


# TensorFlow's C++ start-up lines on a machine without a GPU, written to file descriptor 2
# before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot silence them: informational
# lines ("I0000 ..."), the absl preamble and the CPU-feature notice.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} |"
    r"To enable the following instructions|This TensorFlow binary is optimized)"
)


def import_tensorflow_quietly():
    """Imports TensorFlow with its informational start-up lines filtered out of stderr.

    Everything else it prints (warnings, errors) is passed through unchanged.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401  (imports TensorFlow, whose start-up lines come in two bursts)
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _STARTUP_NOISE.match(line)))


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


def config_from_arguments(arguments, base_config_path=None):
    """Loads the config file and applies --set overrides and the data folder flags; says which
    file was read."""
    path = arguments.config or base_config_path or default_config_path()
    print(f"config: {path}" if path else "config: built-in defaults (no config.yaml found)")
    overrides = list(arguments.overrides)
    for flag in ("train_dir", "query_dir", "gallery_dir"):
        value = getattr(arguments, flag, None)
        if value is not None:
            overrides.append(f"data.{flag}={json.dumps(str(value))}")
    return load_config(path, overrides)


def exit_on_user_error(main):
    """Runs `main`; a ReIDError becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except ReIDError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped
