"""The one exception type the CLI turns into a one-line message and exit code 2.

Anything a user can cause (a bad path, a bad option value, a file that is not a
cache) raises `UserError` with a sentence that names the problem and, where there
is one, the fix. Anything else is a bug and keeps its traceback. Reads and writes nothing.
"""


class UserError(Exception):
    """Bad input or environment, reported as one line without a traceback."""


class ReportedElsewhere(UserError):
    """A failure another process has already printed: under torchrun one rank prints
    the line that names the failing rank and the cause, and the others exit non-zero
    without repeating it."""
