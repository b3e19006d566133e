"""Average the aux nets' gradients across ranks (GistNet and LensNet are not wrapped in DDP).

One flat fp32 bucket per device, one ``all_reduce`` (SUM, then divide by the world size: gloo
has no AVG). The reduction runs in fp32 whatever the parameters' dtype, so bf16 gradients are
averaged without bf16 rounding in the sum; the aux nets are small, the extra bytes are cheap.

A parameter that requires grad but has none on this rank (unused this step) takes part with a
zero gradient, as under DDP: every rank must contribute the same bucket layout, or the
collective would hang or mix up tensors. Parameters are taken in the order given, deduplicated,
so every rank must pass the same modules in the same order (the same construction code does).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

ParamSource = nn.Module | torch.Tensor | Iterable[nn.Module | torch.Tensor]


def collect_parameters(modules_or_params: ParamSource) -> list[torch.Tensor]:
    """Parameters requiring grad, in order, each once (modules expanded to their parameters)."""
    items = [modules_or_params] if isinstance(modules_or_params, nn.Module | torch.Tensor) else modules_or_params
    seen: set[int] = set()
    params: list[torch.Tensor] = []
    for item in items:
        tensors = item.parameters() if isinstance(item, nn.Module) else [item]
        for p in tensors:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"expected modules or parameters, got {type(p).__name__}")
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def allreduce_gradients(modules_or_params: ParamSource, group: dist.ProcessGroup | None = None) -> None:
    """Replace every gradient by its mean over the ranks of ``group`` (default: the world).

    A no-op when ``torch.distributed`` is unavailable or not initialised, or the group has one rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size(group)
    if world == 1:
        return
    buckets: dict[torch.device, list[torch.Tensor]] = {}
    for p in collect_parameters(modules_or_params):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.is_sparse:
            raise ValueError("allreduce_gradients does not support sparse gradients")
        buckets.setdefault(p.grad.device, []).append(p.grad)
    for grads in buckets.values():
        _reduce_bucket(grads, world, group)


@torch.no_grad()
def _reduce_bucket(grads: list[torch.Tensor], world: int, group: dist.ProcessGroup | None) -> None:
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat.div_(world)
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(chunk.view_as(g))
