"""The current working context's entry vectors, as the base model reads them.

``x[C, D]`` (the model's dtype) and the value ids ``[C]`` of the current WC's entries live here,
gathered through ``context.model_inputs`` (the path training and evaluation share): gists from
the tree, raw tokens through the model's ``wte``. ``C`` is twice the budget, so a continuation may
overflow the budget until the refocus that follows makes room.
"""

from __future__ import annotations

import torch
from torch import nn

from ..context import WorkingContext
from ..context.inputs import EntryRows, ModelInputs, TreeSource, model_inputs
from ..context.positions import ROPE_BASE
from ..nets import activation_dtype
from ..tree import MCTree
from .errors import SessionError
from .room import first_difference
from .settings import SessionSettings


class EntryBuffer:
    """Entry vectors ``x_CD`` and value ids ``vid_C`` of a session's working context."""

    def __init__(self, tree: MCTree, wte: nn.Embedding, settings: SessionSettings, *, head_dim: int,
                 sequence_len: int, device: torch.device, rope_base: float = ROPE_BASE) -> None:
        self.settings, self.head_dim, self.sequence_len, self.device = settings, head_dim, sequence_len, device
        self.rope_base = rope_base
        dtype = wte.weight.dtype
        C = 2 * settings.budget
        with torch.inference_mode():
            self.x_CD = torch.zeros(C, wte.weight.shape[1], dtype=dtype, device=device)
            self.vid_C = torch.full((C,), -1, dtype=torch.int64, device=device)
            """Value-embedding ids of the entries: the token for a raw entry, -1 for a gist."""
        self.source = TreeSource(tree, wte, device=device, dtype=dtype)
        """Where entry vectors come from: gists from the tree, raw tokens through the model's ``wte``."""

    @property
    def capacity(self) -> int:
        return int(self.x_CD.shape[0])

    def inputs(self, wc: WorkingContext, start: int) -> ModelInputs:
        """The model's inputs for entries ``[start, W)`` of ``wc``, with the rotary tables of the whole WC."""
        s = self.settings
        return model_inputs(self.source, EntryRows.of([wc]), scheme=s.position_scheme, sigma_scale=s.rope_gist_sigma,
                            head_dim=self.head_dim, sequence_len=self.sequence_len,
                            rotary_dtype=activation_dtype(self.device), from_entry=start, rope_base=self.rope_base)

    def gather(self, wc: WorkingContext, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[n, D]`` (model dtype, device) and value ids ``[n]`` of entries ``[start, W)``."""
        inputs = self.inputs(wc, start)
        return inputs.inputs_RWD[0], inputs.value_ids_RW[0]

    def write(self, wc: WorkingContext, start: int) -> None:
        """Make entries ``[start, W)`` those of ``wc`` (the ones before ``start`` are unchanged)."""
        W = len(wc)
        if self.capacity < W:
            raise SessionError(f"working context of {W} entries exceeds the session's buffer")
        x_nD, vid_n = self.gather(wc, start)
        self.x_CD[start:W] = x_nD
        self.vid_C[start:W] = vid_n

    def append(self, at: int, emb_nD: torch.Tensor, ids_n: torch.Tensor) -> None:
        """Raw tokens ``ids[n]`` with embeddings ``[n, D]`` as entries ``[at, at + n)``."""
        n = int(ids_n.shape[0])
        self.x_CD[at:at + n] = emb_nD
        self.vid_C[at:at + n] = ids_n

    def embeddings_of(self, current: WorkingContext, wc: WorkingContext) -> torch.Tensor:
        """``[W, D]`` for ``wc``, which may differ from ``current`` (the allocator's rounds)."""
        p = first_difference(current, wc)
        return torch.cat([self.x_CD[:p], self.gather(wc, p)[0]])
