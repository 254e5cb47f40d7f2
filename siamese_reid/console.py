"""What a person sees on the terminal: the library's messages as plain lines, and TensorFlow
imported without its start-up noise.

The library reports progress and notes through `logging` (a logger per module, under
"siamese_reid"), so a notebook or a service can quiet or redirect them; the entry points and
the benchmarks call `show_messages`, which writes them to stdout exactly as `print` would.

TensorFlow writes informational C++ lines to file descriptor 2 before absl logging is set up,
so TF_CPP_MIN_LOG_LEVEL cannot silence them. The entry points import it through
`import_tensorflow_quietly`, which filters those lines and passes every other one through.
"""

import logging
import os
import re
import sys
import tempfile
from pathlib import Path

# TensorFlow's C++ start-up lines, written to file descriptor 2 before absl logging is set
# up, so TF_CPP_MIN_LOG_LEVEL cannot silence them: informational lines ("I0000 ..."), the
# absl preamble and the CPU-feature notice.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} |"
    r"To enable the following instructions|This TensorFlow binary is optimized)"
)
# On a machine with no NVIDIA driver at all, CUDA's failed initialisation is expected, not an
# error; where a driver is installed the same line means a broken GPU set-up and is kept.
_NO_DRIVER_NOISE = re.compile(r"^E\d{4} .*failed call to cuInit")


def is_startup_noise(line, has_nvidia_driver):
    return bool(_STARTUP_NOISE.match(line)) or (not has_nvidia_driver and bool(_NO_DRIVER_NOISE.match(line)))


def import_tensorflow_quietly():
    """Imports TensorFlow and finds its devices with the start-up noise filtered out of stderr.

    Everything else it prints (warnings, errors) is passed through unchanged. Returns the
    number of GPUs found.
    """
    if "tensorflow" in sys.modules:
        import tensorflow

        return len(tensorflow.config.list_physical_devices("GPU"))
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401  (imports TensorFlow, whose start-up lines come in two bursts)
            import tensorflow

            gpus = tensorflow.config.list_physical_devices("GPU")  # CUDA initialises here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            has_driver = Path("/proc/driver/nvidia").exists()
            sys.stderr.write("".join(line for line in lines if not is_startup_noise(line, has_driver)))
    return len(gpus)


def progress_bar(total, unit_name):
    """A keras Progbar that redraws itself on a terminal and, on a pipe or a file (a log, CI),
    writes one plain line when done: no colour codes, carriage returns or backspaces."""
    import keras

    return keras.utils.Progbar(total, unit_name=unit_name, verbose=1 if sys.stdout.isatty() else 2)


class PlainMessages(logging.StreamHandler):
    """Writes each message alone, as `print` would: no level or time, to whatever `sys.stdout`
    is at the time (pytest's capture included). A record logged with `extra={"end": ""}` ends
    without a newline, so the line that follows completes it ("scoring... rank-1 70%")."""

    def __init__(self):
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record):
        # emit runs under the handler's lock: the stream and terminator are this record's alone
        self.stream = sys.stdout
        self.terminator = getattr(record, "end", "\n")
        super().emit(record)


def show_messages(level=logging.INFO):
    """Shows the library's messages of `level` and above on stdout as plain lines. Installed
    once per process, however often it is called."""
    library = logging.getLogger("siamese_reid")
    library.setLevel(level)
    if not any(isinstance(handler, PlainMessages) for handler in library.handlers):
        library.addHandler(PlainMessages())
