"""Where the caller's current conversation sits in a session's history.

nanochat's chat CLI and web UI resend the whole conversation each turn; the session stores each
token once. ``Conversation`` tells what a resent conversation adds to the stored one, or that it
does not continue it (a new conversation, appended after the history).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tree import MCTree


class Conversation:
    """The current conversation of the history in ``tree``."""

    def __init__(self, tree: MCTree) -> None:
        self.tree = tree
        self.start = tree.num_tokens
        """Where the current conversation's tokens start in the history."""
        self.skip = 0
        """Leading tokens of the caller's conversation that are not stored (a BOS dropped on continuing)."""

    def new_tokens(self, tokens: Sequence[int], bos: int | None = None) -> list[int] | None:
        """What ``tokens`` (a whole conversation) adds to the current one, or None if it does not
        continue it (an empty list: nothing new). With no conversation yet (a new or reopened
        session) every prompt starts one (``begin``)."""
        stored = self.tree.num_tokens - self.start
        if stored == 0 and self.skip == 0:
            return self.begin(tokens, bos)
        head = len(tokens) - self.skip
        if head < stored or stored < 0:
            return None
        mine = self.tree.token_ids(self.start, self.tree.num_tokens)
        theirs = torch.tensor(list(tokens[self.skip:self.skip + stored]), dtype=torch.int64)
        if not torch.equal(mine, theirs):
            return None
        return list(tokens[self.skip + stored:])

    def begin(self, tokens: Sequence[int], bos: int | None) -> list[int]:
        """Begin a new conversation after the stored history; returns the tokens to add. A leading
        BOS is dropped when there is history before it, so the turn reads as the history's next."""
        self.start = self.tree.num_tokens
        self.skip = 1 if self.start > 0 and len(tokens) > 0 and tokens[0] == bos else 0
        return list(tokens[self.skip:])
