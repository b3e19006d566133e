"""Positions and rotary tables the base model sees for any working-context layout.

The base model must never see a position outside the range it was trained on, however long the
history. A *position scheme* maps each entry's token span ``[start, end)`` to a position:

- ``ordinal``: the entry's index ``0..W-1``, whatever span it covers. Never beyond the trained
  range because ``W <= sequence_len``; a gist looks like one token to the model.
- ``span_center_scaled``: the token-space centre of the span, ``(start + end - 1) / 2``, mapped
  linearly so that the first entry sits at 0 and the last at ``W-1``. Relative distances between
  entries stay proportional to token distances; an all-raw layout gets exactly ``0..W-1``. The
  price: with a long history the raw recent tail is squeezed to fractional spacing.

``rotary_cos_sin`` turns positions (one row per layout, fractional allowed) into nanochat's
rotary table ``[B, W, 1, head_dim/2]``, optionally with Gaussian RoPE damping for gist
entries: the expected rotation under a Gaussian jitter of the position with standard deviation
``sigma`` is the rotation damped by ``exp(-(sigma * inv_freq)^2 / 2)`` per frequency. ``sigma``
comes from the entry's own span (``span_sigma``), never from the sequence length: a gist's
uncertainty is its own span, whatever history surrounds it.

``PositionalCache`` keeps the last rotary rows of each session id (LRU); training stitches every
batch's override (B > 1, every row its own layout) from it (``MCController.positional_caches``).
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np
import torch

from .working_context import WorkingContextError

if TYPE_CHECKING:
    from .working_context import WorkingContext

ROPE_BASE = 10000.0
"""The rotary base of nanochat's pin (master's is 100,000: ``rope_base`` reads a model's own)."""
UNIFORM_SPAN_SIGMA = 1.0 / math.sqrt(12.0)
"""Default ``span_sigma`` scale: the standard deviation of a position uniform over the span."""



def rope_base(model: object) -> float:
    """The rotary base of the host's model: the default ``base`` of its ``_precompute_rotary_embeddings``
    (nanochat's pin: 10,000; master: 100,000), so that tables for the plugin's positions match the
    model's own; ``ROPE_BASE`` for a model without one."""
    precompute = getattr(model, "_precompute_rotary_embeddings", None)
    if precompute is None:
        return ROPE_BASE
    base = inspect.signature(precompute).parameters.get("base")
    return float(base.default) if base is not None and base.default is not inspect.Parameter.empty else ROPE_BASE


PositionScheme = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(starts[B, W], ends[B, W], mask[B, W]) -> positions[B, W]`` (float32, in [0, W-1])."""


def _ordinal(starts_BW: torch.Tensor, ends_BW: torch.Tensor, mask_BW: torch.Tensor) -> torch.Tensor:
    B, W = starts_BW.shape
    return torch.arange(W, dtype=torch.float32, device=starts_BW.device).expand(B, W).clone()


def _span_center_scaled(starts_BW: torch.Tensor, ends_BW: torch.Tensor, mask_BW: torch.Tensor) -> torch.Tensor:
    # float64: token indices of a very long history stay exact, and rounding to float32 at the
    # end is monotone, so ordered entries keep non-decreasing positions.
    centre_BW = (starts_BW.to(torch.float64) + ends_BW.to(torch.float64) - 1.0) * 0.5
    last_B1 = (mask_BW.sum(dim=1, keepdim=True) - 1).clamp_min(0).to(torch.float64)
    lo_B1 = centre_BW.masked_fill(~mask_BW, math.inf).amin(dim=1, keepdim=True)
    hi_B1 = centre_BW.masked_fill(~mask_BW, -math.inf).amax(dim=1, keepdim=True)
    extent_B1 = hi_B1 - lo_B1
    scale_B1 = torch.where(extent_B1 > 0, last_B1 / extent_B1.clamp_min(1e-300), torch.zeros_like(extent_B1))
    pos_BW = ((centre_BW - lo_B1) * scale_B1).clamp(min=0.0)
    pos_BW = torch.minimum(pos_BW, last_B1)
    pos_BW = torch.where(mask_BW, pos_BW, last_B1.expand_as(pos_BW))  # right padding sits on the last entry
    return pos_BW.to(torch.float32)


POSITION_SCHEMES: dict[str, PositionScheme] = {"ordinal": _ordinal, "span_center_scaled": _span_center_scaled}
"""Known schemes by name."""


def _scheme(name: str) -> PositionScheme:
    fn = POSITION_SCHEMES.get(name)
    if fn is None:
        raise WorkingContextError(f"unknown position scheme {name!r}; allowed: {'|'.join(POSITION_SCHEMES)}")
    return fn


@overload
def entry_positions(
    starts_BW: torch.Tensor,
    ends_BW: torch.Tensor,
    scheme: str,
    max_position: int,
    *,
    mask_BW: torch.Tensor | None = None,
) -> torch.Tensor: ...
@overload
def entry_positions(starts_BW: WorkingContext, ends_BW: str = "ordinal") -> np.ndarray: ...
def entry_positions(
    starts_BW: torch.Tensor | WorkingContext,
    ends_BW: torch.Tensor | str = "ordinal",
    scheme: str = "ordinal",
    max_position: int | None = None,
    *,
    mask_BW: torch.Tensor | None = None,
) -> torch.Tensor | np.ndarray:
    """``positions[B, W]`` (float32, each in ``[0, W-1]``) of entries spanning ``[starts, ends)``.

    ``mask_BW`` (True = real entry, right padding) excludes padding from ``span_center_scaled``'s
    range. ValueError if ``W > max_position``: the base model never sees a position outside
    ``[0, max_position)``. Entries must be in order (non-decreasing starts), as in a working context.

    ``entry_positions(wc, scheme)`` is the one-row form for a ``WorkingContext``: ``positions[W]``
    as a numpy array (int64 for ``ordinal``, float32 otherwise).
    """
    if not isinstance(starts_BW, torch.Tensor):
        wc = starts_BW
        name = ends_BW if isinstance(ends_BW, str) else scheme
        row = entry_positions(
            torch.tensor(np.asarray(wc.starts, dtype=np.int64))[None],
            torch.tensor(np.asarray(wc.ends, dtype=np.int64))[None],
            name,
            max(len(wc), 1),
        )[0].numpy()
        return row.astype(np.int64) if name == "ordinal" else row
    if not isinstance(ends_BW, torch.Tensor) or max_position is None:
        raise TypeError("entry_positions(starts[B, W], ends[B, W], scheme, max_position)")
    fn = _scheme(scheme)
    if starts_BW.dim() != 2 or ends_BW.shape != starts_BW.shape:
        raise ValueError(f"starts and ends must both be [B, W], got {tuple(starts_BW.shape)}, {tuple(ends_BW.shape)}")
    entries = starts_BW.shape[1]
    if entries > max_position:
        raise ValueError(
            f"{entries} working-context entries need positions up to {entries - 1}, beyond the base model's "
            f"trained range [0, {max_position}): lower the working-context budget"
        )
    mask = torch.ones_like(starts_BW, dtype=torch.bool) if mask_BW is None else mask_BW.bool()
    if mask.shape != starts_BW.shape:
        raise ValueError(f"mask must be [B, W] = {tuple(starts_BW.shape)}, got {tuple(mask.shape)}")
    if entries == 0:
        return torch.zeros(starts_BW.shape, dtype=torch.float32, device=starts_BW.device)
    return fn(starts_BW, ends_BW, mask)


def inverse_frequencies(head_dim: int, base: float = ROPE_BASE, device: torch.device | None = None) -> torch.Tensor:
    """``inv_freq[head_dim/2]`` (float32), nanochat's ``1 / base^(2i / head_dim)``."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary head_dim must be a positive even number, got {head_dim}")
    channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    return 1.0 / (base ** (channel_range / head_dim))


def span_sigma(spans_BW: torch.Tensor, scale: float = UNIFORM_SPAN_SIGMA) -> torch.Tensor:
    """Gaussian RoPE width ``sigma[B, W]`` (float32) of entries covering ``spans`` tokens.

    ``sigma = scale * span`` for gists (span > 1) and 0 for raw tokens (no damping). The default
    scale, ``1/sqrt(12)``, is the standard deviation of a position uniform over the span. The
    width depends on the entry's own span only, never on the sequence or working-context length.
    """
    spans = spans_BW.to(torch.float32)
    return torch.where(spans > 1, spans * scale, torch.zeros_like(spans))


def rotary_cos_sin(
    positions_BW: torch.Tensor,
    head_dim: int,
    base: float = ROPE_BASE,
    dtype: torch.dtype = torch.bfloat16,
    gaussian_sigma: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``[B, W, 1, head_dim/2]``, for per-row ``positions[B, W]``.

    Identical to nanochat's ``_precompute_rotary_embeddings`` table for integer positions
    (computed in float32, then cast to ``dtype``). ``gaussian_sigma[B, W]`` (position units,
    see ``span_sigma``) damps each frequency by ``exp(-(sigma * inv_freq)^2 / 2)``.
    """
    if positions_BW.dim() != 2:
        raise ValueError(f"positions must be [B, W], got {tuple(positions_BW.shape)}")
    inv_freq_F = inverse_frequencies(head_dim, base, positions_BW.device)
    freqs_BWF = positions_BW.to(torch.float32)[..., None] * inv_freq_F
    cos_BWF, sin_BWF = freqs_BWF.cos(), freqs_BWF.sin()
    if gaussian_sigma is not None:
        if gaussian_sigma.shape != positions_BW.shape:
            raise ValueError(f"gaussian_sigma must be [B, W] = {tuple(positions_BW.shape)}")
        damp_BWF = torch.exp(-0.5 * (gaussian_sigma.to(torch.float32)[..., None] * inv_freq_F) ** 2)
        cos_BWF, sin_BWF = cos_BWF * damp_BWF, sin_BWF * damp_BWF
    return cos_BWF.to(dtype)[:, :, None, :], sin_BWF.to(dtype)[:, :, None, :]


class PositionalCache:
    """The last rotary rows ``(cos[W, 1, F], sin[W, 1, F])`` of each session, LRU-bounded.

    ``stack(session_ids)`` builds a batched override ``[B, W_max, 1, F]`` with every row its own
    layout; shorter rows are right-padded with the identity rotation (cos 1, sin 0).
    """

    def __init__(self, max_sessions: int = 256) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._rows: OrderedDict[Hashable, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def reserve(self, rows: int) -> None:
        """Keep at least ``rows`` sessions: a batch's own rows are never evicted before they are stacked."""
        self.max_sessions = max(self.max_sessions, rows)

    def __contains__(self, session_id: Hashable) -> bool:
        return session_id in self._rows

    def put(self, session_id: Hashable, cos_W1F: torch.Tensor, sin_W1F: torch.Tensor) -> None:
        """Store a session's rows (most recently used); evicts the least recently used beyond the bound."""
        if cos_W1F.dim() != 3 or cos_W1F.shape[1] != 1 or sin_W1F.shape != cos_W1F.shape:
            raise ValueError(
                f"expected cos and sin of shape [W, 1, F], got {tuple(cos_W1F.shape)}, {tuple(sin_W1F.shape)}"
            )
        self._rows[session_id] = (cos_W1F, sin_W1F)
        self._rows.move_to_end(session_id)
        while len(self._rows) > self.max_sessions:
            self._rows.popitem(last=False)

    def get(self, session_id: Hashable) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The session's rows (marking it most recently used), or None."""
        rows = self._rows.get(session_id)
        if rows is None:
            self.misses += 1
            return None
        self.hits += 1
        self._rows.move_to_end(session_id)
        return rows

    def pop(self, session_id: Hashable) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._rows.pop(session_id, None)

    def clear(self) -> None:
        self._rows.clear()

    def stack(self, session_ids: Sequence[Hashable], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` each ``[B, W_max, 1, F]`` for ``session_ids`` (KeyError naming a missing one).

        ``W_max`` is ``width`` if given (>= the longest row), else the longest row.
        """
        if not session_ids:
            raise ValueError("stack needs at least one session id")
        rows = []
        for sid in session_ids:
            row = self.get(sid)
            if row is None:
                raise KeyError(f"no positional rows cached for session {sid!r}")
            rows.append(row)
        longest = max(cos.shape[0] for cos, _ in rows)
        width = longest if width is None else width
        if width < longest:
            raise ValueError(f"width {width} is shorter than the longest cached row ({longest})")
        cos0 = rows[0][0]
        cos_BW1F = torch.ones(len(rows), width, 1, cos0.shape[2], dtype=cos0.dtype, device=cos0.device)
        sin_BW1F = torch.zeros_like(cos_BW1F)
        for b, (cos, sin) in enumerate(rows):
            cos_BW1F[b, : cos.shape[0]] = cos
            sin_BW1F[b, : sin.shape[0]] = sin
        return cos_BW1F, sin_BW1F
