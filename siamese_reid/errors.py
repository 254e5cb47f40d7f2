"""The one error type a user can cause.

Entry points catch `ReIDError` and print its message on one line; anything else is a bug and
keeps its traceback.
"""


class ReIDError(ValueError):
    """Bad input from the user: a config typo, a missing folder, an unusable dataset."""
