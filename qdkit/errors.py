"""The one exception type a user sees: the CLI prints its message as one line and exits with 2."""

from __future__ import annotations


class QdkitError(Exception):
    """Bad input or an impossible request; the message names the file and what is wrong."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type name), short enough for a one-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
