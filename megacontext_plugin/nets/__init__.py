"""GistNet and LensNet, the dtype they run in, their gradient all-reduce under DDP, and what they
read of the host's base model.

The package imports only torch and ``megacontext_plugin.config``. The stand-in base model
(``tiny_gpt``) and its checkpoint file (``tiny_checkpoint``), which also read ``context`` and
``checkpoint``, are imported by their module path.
"""

from __future__ import annotations

from .aux import AuxNets, build_gistnet, build_lensnet
from .base_model import model_device, model_dims, model_wte
from .distributed import allreduce_gradients, collect_parameters
from .dtype import AUX_DTYPES, activation_dtype, native_bf16, resolve_aux_dtype
from .gistnet import HEADS, POOLINGS, GistNet
from .lensnet import CONTEXTS, LensNet

__all__ = [
    "AUX_DTYPES",
    "CONTEXTS",
    "HEADS",
    "POOLINGS",
    "AuxNets",
    "GistNet",
    "LensNet",
    "activation_dtype",
    "allreduce_gradients",
    "build_gistnet",
    "build_lensnet",
    "collect_parameters",
    "model_device",
    "model_dims",
    "model_wte",
    "native_bf16",
    "resolve_aux_dtype",
]
