"""Errors meant for people: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a file, a recipe, a flag). The message names the
    thing that was wrong and how to fix it; the CLI shows it without a traceback."""


class DivergenceError(UserError):
    """The loss became NaN or Inf; raised after the last good checkpoint is safe."""


class OutOfMemory(UserError):
    """A device ran out of memory during a run; the message names the device, its images per
    pass and a system.device_batch to try. Earlier checkpoints are intact."""


class Interrupted(UserError):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint."""


def shown(text) -> str:
    """`text` (a path, a file name, a message) safe to put into a one-line message:
    control characters (newline, ESC, NUL...) are written as Python escapes, so a file
    named with a newline cannot split an error and an ESC sequence cannot reach the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def shown_lines(text) -> str:
    """`shown` for each line of a multi-line text (a rendered table): its line breaks stay,
    an ESC or a carriage return from a recipe name, a table title or a label does not
    (reliability-redteam-2 probe 9.5)."""
    return "\n".join(shown(line) for line in str(text).split("\n"))


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message as one short line for a UserError: its first line, except for
    MXNet's errors, which start with "Traceback" and give the reason on their last line
    (e.g. `LocalFileSystem: Check failed: ... No such file or directory`)."""
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    if not lines:
        return e.__class__.__name__
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line.strip()[:limit]
