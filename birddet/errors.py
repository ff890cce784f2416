"""Error types that carry a user-facing message.

`InputError` marks a problem with what the user gave us (a file, an id, an option): the CLI prints its message on
one line and exits with code 2. Anything else is a bug or an environment failure and exits with code 1.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message says what is wrong, where, and how to fix it."""


class RunStopped(RuntimeError):
    """A run stopped for a reason we can explain (e.g. a non-finite loss): one line on stderr, exit code 1.

    Not bad input, so not exit code 2, but no traceback either: the message says what happened and what to try.
    """


class WeightsError(InputError):
    """A weights file that cannot be used: truncated, wrong architecture, missing or extra keys, unsafe pickle."""
