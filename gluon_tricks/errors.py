"""Errors meant for people: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a file, a recipe, a flag). The message names the
    thing that was wrong and how to fix it; the CLI shows it without a traceback."""


class DivergenceError(UserError):
    """The loss became NaN or Inf; raised after the last good checkpoint is safe."""


class Interrupted(UserError):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint."""
