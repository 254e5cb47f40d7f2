"""Command line: python evaluate.py --help"""

import sys

from siamese_reid.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
