"""Command line: python -m siamese_reid.import_torchreid --help

The name users are given for the command (an entry point, like train.py at the top of the
repository); the command itself is `siamese_reid.cli.import_torchreid`, run here as __main__ so
that nothing in the library imports the command-line layer.
"""

import os
import runpy

# Before TensorFlow is imported: keep its C++ start-up chatter off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __name__ == "__main__":
    runpy.run_module("siamese_reid.cli.import_torchreid", run_name="__main__", alter_sys=True)
