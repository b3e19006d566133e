"""GistNet and LensNet, the dtype they run in, and their gradient all-reduce under DDP.

Imports only torch and ``megacontext_plugin.config``.
"""

from __future__ import annotations

from ..config import ConfigError, MCConfig
from .distributed import allreduce_gradients, collect_parameters
from .dtype import AUX_DTYPES, native_bf16, resolve_aux_dtype
from .gistnet import HEADS, POOLINGS, GistNet
from .lensnet import CONTEXTS, LensNet


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


__all__ = [
    "AUX_DTYPES",
    "CONTEXTS",
    "HEADS",
    "POOLINGS",
    "GistNet",
    "LensNet",
    "allreduce_gradients",
    "build_gistnet",
    "build_lensnet",
    "collect_parameters",
    "native_bf16",
    "resolve_aux_dtype",
]
