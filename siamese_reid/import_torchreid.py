"""Command line: python -m siamese_reid.import_torchreid --help"""

import os
import sys

# Before TensorFlow is imported: keep its C++ start-up chatter off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from siamese_reid.cli.import_torchreid import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
