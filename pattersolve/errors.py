"""The one exception type for user mistakes, and the exit codes the CLI maps it to.

Raise :class:`PattersolveError` anywhere a user (not the program) is at fault; the
entry points in :mod:`pattersolve.cli` catch it once, print a single line naming
the problem and the fix, and exit with ``error.exit_code``.
"""

from __future__ import annotations

import re
from enum import IntEnum


class ExitCode(IntEnum):
    """Stable exit codes for scripts calling pattersolve."""

    OK = 0
    INTERNAL = 1  # a bug: traceback printed
    USAGE = 2  # click's own code for bad flags
    INPUT_MISSING = 3  # file missing or unreadable
    INPUT_FORMAT = 4  # not an MTZ / CIF / HKL, or corrupt
    COLUMNS = 5  # no usable column, or ambiguous columns
    DATA = 6  # empty, all-NaN, or otherwise unusable data
    RESOURCES = 7  # grid would not fit in memory
    MODEL = 8  # model file corrupt, missing or mismatched
    OUTPUT = 9  # output exists (without --overwrite) or is unwritable
    BACKEND = 10  # requested backend or device not available
    NOT_REPRODUCED = 11  # pattersolve-train: a reproduction check failed (metrics or weights)
    INTERRUPTED = 130  # Ctrl-C / SIGINT (the shell's 128 + 2); outputs untouched


class PattersolveError(Exception):
    """A user-facing error: one line, a fix, and an exit code.

    Parameters
    ----------
    message
        What is wrong, naming the file or column concerned.
    fix
        What the user can do about it (appended as "fix: ...").
    exit_code
        The process exit code the CLI uses.
    """

    def __init__(self, message: str, fix: str = "", exit_code: ExitCode = ExitCode.DATA):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.exit_code = ExitCode(exit_code)

    def one_line(self) -> str:
        """The single line the command prints to stderr (options named as its flags)."""
        text = self.message.rstrip(".")
        if self.fix:
            text += f"; fix: {self.fix}"
        return " ".join(text.split())

    def __str__(self) -> str:
        """The same line for Python callers: flags named as :func:`pattersolve.phase`'s
        parameters (``--d-min`` -> ``d_min``)."""
        return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), self.one_line())


#: A command-line flag quoted in a message (``--d-min``), and its parameter name.
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
