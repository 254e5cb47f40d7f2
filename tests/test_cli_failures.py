"""The entry points as a user runs them, given bad input and faults: each failure is one line
on stderr with exit status 2, and nothing the user had is lost."""

import re
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

# The smallest training that runs every stage: one VGG block on 32x32 images, one step.
TINY = [
    "data.image_height=32",
    "data.image_width=32",
    "model.vgg_blocks=1",
    "model.embedding_dim=16",
    "training.identities_per_batch=4",
    "training.images_per_identity=2",
    "training.steps_per_epoch=1",
    "training.epochs=1",
    "training.warmup_epochs=0",
    "evaluation.flip_test=false",
    "evaluation.num_examples=1",
]

# TensorFlow's C++ log lines: "E0000 00:00:1796053837.047473 5121 util.cc:131] ..."
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)


def run_script(script, *arguments, cwd=PROJECT_ROOT, timeout=240):
    """`python SCRIPT ARGUMENTS...` as a user types it; `--set` pairs come from `settings`."""
    command = [sys.executable, str(PROJECT_ROOT / script), *map(str, arguments)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def settings(*items):
    return [word for item in items for word in ("--set", item)]


def test_training_prints_no_tensorflow_log_lines(tmp_path, tiny_demo):
    # "E0000 ... oneDNN supports DT_INT32 only on platforms with AVX-512" appeared at the first
    # step: the loss transposed the integer labels, an op oneDNN takes over only for floats.
    result = run_script("train.py", "--output_dir", tmp_path, *settings(f"data.root={tiny_demo}", *TINY))
    assert result.returncode == 0, result.stderr
    assert not CPP_LOG_LINE.search(result.stderr), result.stderr
