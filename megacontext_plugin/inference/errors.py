"""The inference room's one user-facing error."""

from __future__ import annotations


class SessionError(ValueError):
    """A session cannot be opened or used as asked (the message says why and what to do)."""
