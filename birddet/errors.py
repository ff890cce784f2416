"""Error types that carry a user-facing message.

`InputError` marks a problem with what the user gave us (a file, an id, an option): the CLI prints its message on
one line and exits with code 2. Anything else is a bug or an environment failure and exits with code 1.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message says what is wrong, where, and how to fix it."""


class WeightsError(InputError):
    """A weights file that cannot be used: truncated, wrong architecture, missing or extra keys, unsafe pickle."""
