"""Honest MFU: executed FLOPs over the device's peak.

``peak_flops(name)`` is the bf16 dense peak per device: nanochat's own ``get_peak_flops`` when
the plugin runs inside nanochat, else a short datasheet table of common GPUs. An unknown GPU,
the CPU and MPS give ``inf``, so MFU is not reported rather than a wrong guess.

``base_flops_fn(model)`` returns the base model's forward+backward FLOPs per token at an
attention length ``context``: a model's own ``flops_per_token(context)`` (``TinyGPT``), or, for
nanochat's ``GPT``, its ``estimate_flops()`` (computed at ``sequence_len``) with the attention
term re-evaluated at ``context`` (``12 * n_head * head_dim * min(window, context)`` per layer,
nanochat's formula): a ``--mc`` row of ``W`` entries attends over ``W``, not ``T``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

logger = logging.getLogger("megacontext_plugin.training")


# bf16 dense peak FLOP/s from the vendors' datasheets, for when the host's own table is not there
# (benchmarks, tests): the first row whose every pattern is in the lower-cased device name wins,
# so the more specific rows (PCIe, NVL) come first.
_DATASHEET_PEAKS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h100", "pcie"), 756e12),
    (("h100", "nvl"), 835e12),
    (("h100",), 989e12),
    (("h200", "nvl"), 836e12),
    (("h200",), 989e12),
    (("b200",), 2.25e15),
    (("a100",), 312e12),
    (("l40s",), 362e12),
    (("5090",), 209.5e12),
    (("4090",), 165.2e12),
    (("mi300x",), 1.3074e15),
)


def _datasheet_peak(device_name: str) -> float:
    name = device_name.lower()
    return next((peak for patterns, peak in _DATASHEET_PEAKS if all(p in name for p in patterns)), math.inf)


def peak_flops(device_name: str) -> float:
    """bf16 peak FLOP/s of one device by name; ``inf`` when unknown.

    Inside nanochat the host's own ``nanochat.common.get_peak_flops`` answers (one table for
    nanochat's MFU and ours); elsewhere a short datasheet table of common GPUs does.
    """
    try:
        from nanochat.common import get_peak_flops  # the host, when the plugin runs inside nanochat
    except ImportError:
        return _datasheet_peak(device_name)
    return float(get_peak_flops(device_name))


def device_peak_flops(device: torch.device | str) -> float:
    """Peak FLOP/s of ``device``: the table for a CUDA / XPU device, ``inf`` for CPU and MPS."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    elif device.type == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        name = torch.xpu.get_device_name(device)
    else:
        return math.inf
    peak = peak_flops(name)
    if math.isinf(peak):
        logger.warning("megacontext: peak FLOPs unknown for %s: mc/mfu is not reported", name)
    return peak


def base_flops_fn(model: torch.nn.Module) -> Callable[[int], int]:
    """``context -> forward+backward FLOPs per token`` of the base model (see the module docstring)."""
    own = getattr(model, "flops_per_token", None)
    if callable(own):
        return own
    estimate = getattr(model, "estimate_flops", None)
    if not callable(estimate):
        raise TypeError(f"{type(model).__name__} has neither flops_per_token(context) nor estimate_flops()")
    cfg = model.config
    heads, head_dim, seq = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.sequence_len
    windows = [w[0] if isinstance(w, tuple | list) else int(w)
               for w in getattr(model, "window_sizes", [-1] * cfg.n_layer)]

    def attention(context: int) -> int:
        return sum(12 * heads * head_dim * (context if w < 0 else min(w, context)) for w in windows)

    rest = int(estimate()) - attention(seq)

    def per_token(context: int) -> int:
        return rest + attention(context)

    return per_token


def head_flops_per_token(model: torch.nn.Module) -> int:
    """Forward+backward FLOPs per token of the output head (``6 * lm_head`` weights; 0 without one):
    the part of ``base_flops_fn``'s count that the teacher's pass runs on the horizon only."""
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    return 6 * weight.numel() if isinstance(weight, torch.Tensor) else 0


def mfu_percent(flops: float, seconds: float, peak: float) -> float:
    """``100 * flops / (seconds * peak)``; NaN when it cannot be computed (no time, unknown peak)."""
    if seconds <= 0 or not math.isfinite(peak) or peak <= 0:
        return math.nan
    return 100.0 * flops / (seconds * peak)
