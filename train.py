"""Command line: python train.py --help"""

import sys

from siamese_reid.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
