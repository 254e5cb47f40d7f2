"""The one error type a user can cause.

Entry points catch `ReIDError` and print its message on one line; anything else is a bug and
keeps its traceback.
"""


class ReIDError(ValueError):
    """Bad input from the user: a config typo, a missing folder, an unusable dataset."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run that can continue: `run_dir` holds its last saved epoch, which
    `experiment.resume(run_dir)` (train.py --resume RUN_DIR) continues from."""

    def __init__(self, run_dir):
        super().__init__(f"interrupted; the run in '{run_dir}' can be resumed")
        self.run_dir = run_dir
