"""User-facing errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations


class SeqrecError(Exception):
    """A mistake the user can fix (bad file, bad option, bad artifact).

    The message says what went wrong, where, and how to fix it. The CLI prints it
    on one line and exits with status 2; bugs keep their tracebacks.
    """


class DataError(SeqrecError):
    """The input log cannot be read or is empty after filtering."""


class ArtifactError(SeqrecError):
    """A saved artifact is missing, corrupt or from an incompatible version."""


class UnknownIdError(SeqrecError):
    """A user or item id that the model has never seen."""
