"""Hysteresis memory: when each tree node last flipped, as two sorted numpy arrays.

A *flip* of node P is expanding P into its children or collapsing P's children into P. The
tracker records, per node ``(level, index)`` (level >= 1), the refocus number of its last flip;
a flip of P at refocus ``r'`` is blocked while ``r' - last < cooldown``. Entries that can no
longer block anything are pruned after each refocus, so the state holds at most
``cooldown * edits per refocus`` nodes. Lookups are one ``np.searchsorted``.
"""

from __future__ import annotations

import numpy as np

_LEVEL_BITS = 6
MAX_NODE_INDEX = (1 << (63 - _LEVEL_BITS)) - 1
"""Largest node index the key encoding holds (2**57 - 1; histories up to 2**57 tokens)."""


def node_keys(levels_n: np.ndarray, indices_n: np.ndarray) -> np.ndarray:
    """``keys[n]`` (int64): one integer per node, ``index << 6 | level``."""
    return (indices_n.astype(np.int64) << _LEVEL_BITS) | levels_n.astype(np.int64)


class CooldownTracker:
    """Refocus number of the last flip of recently flipped nodes."""

    __slots__ = ("_keys", "_last", "cooldown")

    def __init__(self, cooldown: int) -> None:
        self.cooldown = cooldown
        self._keys = np.zeros(0, dtype=np.int64)  # sorted, unique
        self._last = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._keys.shape[0])

    def blocked(self, levels_n: np.ndarray, indices_n: np.ndarray, now: int) -> np.ndarray:
        """``mask[n]``: flipping node ``(levels_n[i], indices_n[i])`` at refocus ``now`` is blocked."""
        n = int(levels_n.shape[0])
        if self.cooldown == 0 or self._keys.size == 0 or n == 0:
            return np.zeros(n, dtype=bool)
        keys_n = node_keys(levels_n, indices_n)
        at = np.searchsorted(self._keys, keys_n)
        np.minimum(at, self._keys.size - 1, out=at)
        return (self._keys[at] == keys_n) & (now - self._last[at] < self.cooldown)

    def record(self, levels_n: np.ndarray, indices_n: np.ndarray, now: int) -> None:
        """Remember that nodes ``(levels_n, indices_n)`` flipped at refocus ``now``."""
        if self.cooldown == 0 or levels_n.shape[0] == 0:
            return
        new_keys = np.unique(node_keys(levels_n, indices_n))
        keep = ~np.isin(self._keys, new_keys, assume_unique=True)
        keys = np.concatenate([self._keys[keep], new_keys])
        last = np.concatenate([self._last[keep], np.full(new_keys.shape[0], now, dtype=np.int64)])
        order = np.argsort(keys, kind="stable")
        self._keys, self._last = keys[order], last[order]

    def prune(self, next_refocus: int) -> None:
        """Forget nodes that can no longer be blocked at ``next_refocus`` or later."""
        if self._keys.size:
            keep = next_refocus - self._last < self.cooldown
            self._keys, self._last = self._keys[keep], self._last[keep]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"keys": self._keys.copy(), "last": self._last.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        keys = np.asarray(state["keys"], dtype=np.int64)
        last = np.asarray(state["last"], dtype=np.int64)
        if keys.shape != last.shape or keys.ndim != 1 or (keys.size > 1 and np.any(np.diff(keys) <= 0)):
            raise ValueError("cooldown state must be two 1-D arrays of one length with strictly increasing keys")
        self._keys, self._last = keys.copy(), last.copy()
