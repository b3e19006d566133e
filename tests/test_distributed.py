"""allreduce_gradients: 2 gloo ranks on CPU average the aux nets' gradients; a no-op without a group."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from megacontext_plugin.nets import allreduce_gradients, collect_parameters

WORLD = 2
TIMEOUT_S = 60


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)
    gist = nn.Sequential(nn.Linear(4, 3), shared)
    lens = nn.Sequential(shared, nn.Linear(3, 2).to(torch.bfloat16))  # `shared` twice: reduced once
    return gist, lens


def _fill_grads(gist: nn.Module, lens: nn.Module, rank: int) -> None:
    for i, p in enumerate(collect_parameters([gist, lens])):
        p.grad = torch.full_like(p, float(10 * rank + i))
    lens[1].bias.grad = None if rank == 0 else torch.full_like(lens[1].bias, 4.0)  # unused on rank 0


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        gist, lens = _nets()
        _fill_grads(gist, lens, rank)
        allreduce_gradients([gist, lens])
        grads = {f"{n}.{k}": p.grad for n, m in (("gist", gist), ("lens", lens)) for k, p in m.named_parameters()}
        torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_the_average_gradient(tmp_path: Path) -> None:
    ctx = mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"gloo ranks did not finish within {TIMEOUT_S}s")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    gist, lens = _nets()
    expected: dict[int, torch.Tensor] = {}
    for rank in range(WORLD):  # what each rank had before the reduction
        _fill_grads(gist, lens, rank)
        for p in collect_parameters([gist, lens]):
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            expected[id(p)] = expected.get(id(p), 0) + grad.float() / WORLD
    named = {f"{n}.{k}": p for n, m in (("gist", gist), ("lens", lens)) for k, p in m.named_parameters()}
    assert results[0].keys() == results[1].keys() == named.keys()
    for name, p in named.items():
        want = expected[id(p)].to(p.dtype)
        for rank in range(WORLD):
            got = results[rank][name]
            assert got.dtype == p.dtype, name
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{name} on rank {rank}")
    assert results[0]["lens.1.bias"].unique().tolist() == [2.0]  # (0 on the unused rank + 4) / 2


def test_no_process_group_leaves_gradients_alone() -> None:
    assert not dist.is_initialized()
    gist, lens = _nets()
    _fill_grads(gist, lens, rank=1)
    before = [p.grad.clone() for p in collect_parameters([gist, lens])]
    allreduce_gradients([gist, lens])
    assert all(torch.equal(p.grad, b) for p, b in zip(collect_parameters([gist, lens]), before, strict=True))


def test_collect_parameters_dedupes_and_skips_frozen() -> None:
    gist, lens = _nets()
    gist[0].weight.requires_grad_(False)
    params = collect_parameters([gist, lens, lens[1].weight])
    ids = [id(p) for p in params]
    assert len(ids) == len(set(ids)) == 5  # gist.0.bias, shared weight+bias, lens.1 weight+bias
    assert id(gist[0].weight) not in ids
    assert collect_parameters(lens[1].weight) == [lens[1].weight]
    with pytest.raises(TypeError, match="modules or parameters"):
        collect_parameters([gist, "lens"])  # type: ignore[list-item]
