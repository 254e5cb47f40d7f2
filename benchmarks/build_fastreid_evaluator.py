"""Compiles fast-reid's Cython evaluator (rank_cy) from a fast-reid checkout, for
bench_ranking.py to compare against. Nothing of fast-reid is copied into this repository: the
module is built under benchmarks/results/ (git-ignored).

    git clone https://github.com/JDAI-CV/fast-reid /tmp/fast-reid
    pip install "cython>=3,<4"
    python benchmarks/build_fastreid_evaluator.py /tmp/fast-reid
    python benchmarks/bench_ranking.py --fastreid benchmarks/results/fastreid
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

SETUP = """
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize([Extension("rank_cy", ["rank_cy.pyx"], include_dirs=[numpy.get_include()])]))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fastreid_checkout", type=Path)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/fastreid"))
    arguments = parser.parse_args()
    source = arguments.fastreid_checkout / "fastreid" / "evaluation" / "rank_cylib" / "rank_cy.pyx"
    if not source.is_file():
        sys.exit(f"error: {source} not found: give the root of a fast-reid checkout")
    arguments.output.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, arguments.output / "rank_cy.pyx")
    (arguments.output / "setup_rank_cy.py").write_text(SETUP)
    subprocess.run([sys.executable, "setup_rank_cy.py", "build_ext", "--inplace"], cwd=arguments.output, check=True)
    print(f"built {next(arguments.output.glob('rank_cy*.so'))}")


if __name__ == "__main__":
    main()
