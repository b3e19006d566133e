"""GistNet and LensNet for one base model, with the knobs and dtype they were built for.

Training (``training.MCController``, whose ``AuxTrainer`` adds the optimizer, the KL anchor and
the EMAs), inference (``inference.InferenceRuntime``: nets only) and evaluation (the arms, the
post-run validation, a checkpoint's loaders) all hold one :class:`AuxNets`, so neither chat nor
evaluation builds the training room's state to borrow two networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import ConfigError, MCConfig
from .dtype import resolve_aux_dtype
from .gistnet import GistNet
from .lensnet import LensNet


def build_gistnet(cfg: MCConfig, dim: int, width: int | None = None) -> GistNet:
    """GistNet for a base model of width ``dim`` from the ``--gistnet_*`` knobs and ``--block_size``.

    ``width`` is the internal width (default ``dim``); ``--gistnet_heads`` must divide it.
    """
    width = dim if width is None else width
    if width % cfg.gistnet_heads:
        raise ConfigError(
            f"--gistnet_heads ({cfg.gistnet_heads}) must divide the GistNet width ({width}, the model width "
            f"n_embd unless set otherwise); allowed: a divisor of {width}"
        )
    return GistNet(
        dim,
        cfg.block_size,
        layers=cfg.gistnet_layers,
        heads=cfg.gistnet_heads,
        pooling=cfg.gistnet_pooling,
        head=cfg.gistnet_head,
        width=width,
    )


def build_lensnet(cfg: MCConfig, dim: int) -> LensNet:
    """LensNet for a base model of width ``dim`` from the ``--lensnet_*`` knobs."""
    if cfg.lensnet_dim % cfg.lensnet_heads:
        raise ConfigError(
            f"--lensnet_heads ({cfg.lensnet_heads}) must divide --lensnet_dim ({cfg.lensnet_dim}); "
            f"allowed: a divisor of {cfg.lensnet_dim}"
        )
    return LensNet(
        dim, cfg.lensnet_dim, layers=cfg.lensnet_layers, heads=cfg.lensnet_heads, context=cfg.lensnet_context
    )


@dataclass
class AuxNets:
    """The aux nets of a base model of width ``dim`` trained at ``sequence_len``.

    ``cfg`` is already resolved for that model (``MCConfig.for_model``); ``aux_dtype`` is the
    dtype both nets run in (``--mc_aux_dtype`` on ``device``).
    """

    cfg: MCConfig
    sequence_len: int
    gistnet: GistNet
    lensnet: LensNet
    aux_dtype: torch.dtype
    device: torch.device

    @classmethod
    def build(cls, cfg: MCConfig, *, dim: int, sequence_len: int, device: torch.device | str = "cpu") -> AuxNets:
        """Fresh nets, seeded by ``--mc_seed`` (their initialisation is part of the seeded run).

        GistNet's internal width is ``--gistnet_width``, or half the model width (D8)."""
        cfg = cfg.for_model(sequence_len)
        device = torch.device(device)
        aux_dtype = resolve_aux_dtype(cfg.mc_aux_dtype, device)
        width = cfg.gistnet_width or max(cfg.gistnet_heads, dim // 2)
        torch.manual_seed(cfg.mc_seed)
        gistnet = build_gistnet(cfg, dim, width=width).to(device, aux_dtype)
        lensnet = build_lensnet(cfg, dim).to(device, aux_dtype)
        return cls(cfg, sequence_len, gistnet, lensnet, aux_dtype, device)

    @property
    def prompt_recent(self) -> int:
        """Raw tail of a prompt at this model's window (``MCConfig.prompt_tail``): what the allocator
        never edits, LensNet's query included."""
        return self.cfg.prompt_tail(self.sequence_len)

    def eval(self) -> None:
        """Both nets in eval mode (evaluation and chat never train them)."""
        self.gistnet.eval()
        self.lensnet.eval()

    def load_nets(self, state: dict[str, Any]) -> None:
        """Load ``state["gistnet"]`` and ``state["lensnet"]`` (a saved controller state has both)."""
        self.gistnet.load_state_dict(state["gistnet"])
        self.lensnet.load_state_dict(state["lensnet"])
