"""The one exception type a user sees: the CLI prints its message as one line and exits with 2."""
from __future__ import annotations


class QdkitError(Exception):
    """Bad input or an impossible request; the message names the file and what is wrong."""
