"""Dtypes decided by the device: the aux nets' (``--mc_aux_dtype``) and the base model's activations."""

from __future__ import annotations

import torch

AUX_DTYPES: tuple[str, ...] = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device | str) -> bool:
    """True on a CUDA device with native bf16 (compute capability >= 8, e.g. A100, H100, RTX 30xx+)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported()


def resolve_aux_dtype(setting: str, device: torch.device | str) -> torch.dtype:
    """``auto``: bf16 where ``device`` has native bf16, fp32 otherwise (CPU included);
    ``fp32`` / ``bf16``: that dtype on any device."""
    if setting == "fp32":
        return torch.float32
    if setting == "bf16":
        return torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    raise ValueError(f"--mc_aux_dtype: got {setting!r}; allowed: {'|'.join(AUX_DTYPES)}")


def activation_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the base model's activations, KV cache and rotary tables: bf16 on CUDA, fp32
    elsewhere (nanochat's choice for its own rotary table and ``Engine`` KV cache)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
