"""The one error type a user can cause.

Entry points catch `ReIDError` and print its message on one line; anything else is a bug and
keeps its traceback.
"""


class ReIDError(ValueError):
    """Bad input from the user: a config typo, a missing folder, an unusable dataset."""


class ArgumentError(ReIDError):
    """A bad or missing value of one named argument of a library function.

    The message names the argument where it holds `{argument}`: a Python caller reads the
    argument's name (`top_k`), and a command line can name its own flag instead (`--top-k`)
    with `message_for`.
    """

    def __init__(self, argument, template):
        self.argument = argument
        self.template = template
        super().__init__(self.message_for(argument))

    def message_for(self, name):
        return self.template.replace("{argument}", name)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run that can continue: `run_dir` holds its last saved epoch, which
    `experiment.resume(run_dir)` (train.py --resume RUN_DIR) continues from."""

    def __init__(self, run_dir):
        super().__init__(f"interrupted; the run in '{run_dir}' can be resumed")
        self.run_dir = run_dir
