"""GistNet and LensNet: shapes, order sensitivity, non-causality, masks, init, dtypes and exact FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from megacontext_plugin.config import ConfigError, MCConfig
from megacontext_plugin.nets import (
    GistNet,
    LensNet,
    build_gistnet,
    build_lensnet,
    native_bf16,
    resolve_aux_dtype,
)

D, K = 32, 8
POOLINGS = ("attention", "mean", "first")


def counted_flops(module: torch.nn.Module, *args: torch.Tensor) -> int:
    """Matmul FLOPs torch itself counts (math SDPA, so attention shows up as bmm)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops()


def gistnet(pooling: str = "attention", head: str = "mlp", width: int | None = None, seed: int = 0) -> GistNet:
    torch.manual_seed(seed)
    return GistNet(D, K, layers=2, heads=4, pooling=pooling, head=head, width=width)


# ---------------------------------------------------------------------------------------- GistNet
@pytest.mark.parametrize("lead", [(), (7,), (2, 3), (2, 1, 3)])
def test_gistnet_maps_any_leading_dims_and_matches_row_by_row(lead: tuple[int, ...]) -> None:
    net = gistnet()
    children = torch.randn(*lead, K, D)
    gists = net(children)
    assert gists.shape == (*lead, D)
    flat = children.reshape(-1, K, D)
    one_by_one = torch.stack([net(flat[i]) for i in range(flat.shape[0])]).reshape(*lead, D)
    torch.testing.assert_close(gists, one_by_one, rtol=1e-5, atol=1e-5)


def test_gistnet_empty_batch_and_wrong_shapes() -> None:
    net = gistnet()
    assert net(torch.randn(0, 4, K, D)).shape == (0, 4, D)
    with pytest.raises(ValueError, match=r"\[\.\.\., 8, 32\]"):
        net(torch.randn(3, K + 1, D))
    with pytest.raises(ValueError, match="children"):
        net(torch.randn(3, K, D + 1))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gistnet_is_sensitive_to_the_order_of_children(pooling: str) -> None:
    net = gistnet(pooling)
    children = torch.randn(16, K, D)
    permuted = children[:, torch.randperm(K, generator=torch.Generator().manual_seed(1))]
    mean = children.mean(dim=1)
    torch.testing.assert_close(mean, permuted.mean(dim=1))  # the residual alone cannot tell them apart
    correction = (net(children) - mean).norm(dim=-1)
    change = (net(children) - net(permuted)).norm(dim=-1)
    assert (change > 1e-3 * correction).all(), (change / correction).min()  # float noise is ~1e-7


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gistnet_learns_what_order_invariant_pooling_cannot(pooling: str) -> None:
    """Target: the block's FIRST child. Any order-invariant gist can do no better than the mean."""
    torch.manual_seed(0)
    net = GistNet(16, 4, layers=1, heads=2, pooling=pooling, head="linear")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        children = torch.randn(128, 4, 16)
        loss = (net(children) - children[:, 0]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    children = torch.randn(1024, 4, 16)
    with torch.no_grad():
        learned = (net(children) - children[:, 0]).pow(2).mean()
    best_invariant = (children.mean(dim=1) - children[:, 0]).pow(2).mean()  # = 3/4 here
    assert learned < 0.75 * best_invariant, (learned, best_invariant)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_gistnet_starts_near_the_mean_of_its_children(pooling: str, head: str) -> None:
    net = gistnet(pooling, head)
    children = torch.randn(64, K, D)
    mean = children.mean(dim=1)
    relative = (net(children) - mean).norm(dim=-1) / mean.norm(dim=-1)
    assert relative.max() < 0.05
    assert relative.min() > 0  # ... but not exactly the mean: the learned part is live


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("width", [None, 16])
def test_gistnet_gradients_reach_every_parameter(pooling: str, width: int | None) -> None:
    net = gistnet(pooling, width=width)
    children = torch.randn(4, 2, K, D, requires_grad=True)
    target = torch.randn(4, 2, D)
    (net(children) - target).pow(2).sum().backward()
    assert children.grad is not None and children.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_gistnet_runs_in_bf16_on_cpu() -> None:
    net = gistnet("attention")
    children = torch.randn(8, K, D)
    reference = net(children)
    net_bf16 = net.to(torch.bfloat16)
    gists = net_bf16(children.to(torch.bfloat16))
    assert gists.dtype == torch.bfloat16 and torch.isfinite(gists).all()
    torch.testing.assert_close(gists.float(), reference, rtol=0.05, atol=0.05)
    gists.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in net_bf16.parameters())


def test_gistnet_flops_match_a_manual_count_for_a_tiny_config() -> None:
    net = GistNet(dim=8, block_size=4, layers=1, heads=2, pooling="attention", head="linear")
    layer = (2 * 4 * 8 * 8) * 4 + (2 * 4 * 4 * 8) * 2 + (2 * 4 * 8 * 32) * 2  # q,k,v,out + QK^T,AV + MLP
    pool = 2 * 4 * 8 * 16 + 2 * 4 * 8 * 2  # k/v projection + (q . k, a V) for one query per block
    head = 2 * 8 * 8
    assert net.flops_per_gist() == layer + pool + head == 7936
    assert counted_flops(net, torch.randn(5, 4, 8)) == 5 * 7936


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("width", [None, 16])
def test_gistnet_flops_match_torch_flop_counter(pooling: str, head: str, width: int | None) -> None:
    net = gistnet(pooling, head, width)
    assert counted_flops(net, torch.randn(3, 2, K, D)) == 6 * net.flops_per_gist()


def test_gistnet_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"'max'; allowed: attention\|mean\|first"):
        GistNet(D, K, 1, 4, pooling="max")
    with pytest.raises(ValueError, match=r"'conv'; allowed: linear\|mlp"):
        GistNet(D, K, 1, 4, head="conv")
    with pytest.raises(ValueError, match="heads"):
        GistNet(D, K, 1, 5)
    with pytest.raises(ValueError, match="heads"):
        GistNet(D, K, 1, 4, width=18)


# ---------------------------------------------------------------------------------------- LensNet
W, R = 10, 4


def lensnet(context: str = "bidirectional", seed: int = 0) -> LensNet:
    torch.manual_seed(seed)
    return LensNet(D, hidden=16, layers=2, heads=4, context=context)


def lens_inputs(B: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 3, (B, W), generator=g)
    return torch.randn(B, W, D, generator=g), levels, 4**levels, torch.randn(B, R, D, generator=g)


CONTEXTS = ("bidirectional", "cross")


@pytest.mark.parametrize("context", CONTEXTS)
def test_lensnet_scores_are_bounded_with_one_per_entry(context: str) -> None:
    net = lensnet(context)
    with torch.no_grad():
        net.score.weight.mul_(1000.0)  # saturate tanh: the bound must hold, not just be likely
    entries, levels, spans, tail = lens_inputs(B=3)
    scores = net(entries * 100, levels, spans, tail)
    assert scores.shape == (3, W)
    assert scores.abs().max() <= 1.0 and scores.abs().max() > 0.99


@pytest.mark.parametrize("context", CONTEXTS)
def test_lensnet_is_not_causal_the_first_entry_sees_the_last_tail_token(context: str) -> None:
    net = lensnet(context)
    entries, levels, spans, tail = lens_inputs()
    changed = tail.clone()
    changed[:, -1] = torch.randn(D)
    before, after = net(entries, levels, spans, tail), net(entries, levels, spans, changed)
    assert ((before[:, 0] - after[:, 0]).abs() > 1e-6).all()


def test_bidirectional_lensnet_entries_see_later_entries() -> None:
    net = lensnet("bidirectional")
    entries, levels, spans, tail = lens_inputs()
    changed = entries.clone()
    changed[:, -1] = torch.randn(D)
    assert ((net(entries, levels, spans, tail)[:, 0] - net(changed, levels, spans, tail)[:, 0]).abs() > 1e-6).all()


@pytest.mark.parametrize("context", CONTEXTS)
def test_lensnet_padding_never_affects_real_entries(context: str) -> None:
    net = lensnet(context)
    entries, levels, spans, tail = lens_inputs(B=1)
    real = 6
    alone = net(entries[:, :real], levels[:, :real], spans[:, :real], tail)
    mask = torch.zeros(1, W, dtype=torch.bool)
    mask[:, :real] = True
    junk_entries = entries.clone()
    junk_entries[:, real:] = 1e3 * torch.randn(W - real, D)
    junk_levels = levels.clone()
    junk_levels[:, real:] = -1  # materialise_batch's PAD_LEVEL
    junk_spans = spans.clone()
    junk_spans[:, real:] = 10**6
    padded = net(junk_entries, junk_levels, junk_spans, tail, mask)
    torch.testing.assert_close(padded[:, :real], alone, rtol=1e-5, atol=1e-6)
    assert (padded[:, real:] == 0).all()


@pytest.mark.parametrize("context", CONTEXTS)
def test_lensnet_levels_and_spans_matter(context: str) -> None:
    net = lensnet(context)
    entries, levels, spans, tail = lens_inputs()
    base = net(entries, levels, spans, tail)
    other_levels = (levels + 1) % 3
    assert (net(entries, other_levels, spans, tail) - base).abs().min() > 1e-7
    assert (net(entries, levels, spans * 64, tail) - base).abs().min() > 1e-7


def test_cross_lensnet_knows_recency_from_the_spans_after_an_entry() -> None:
    # cross: entries never attend to each other, so only the "tokens after" feature links them
    net = lensnet("cross")
    entries, levels, spans, tail = lens_inputs()
    longer = spans.clone()
    longer[:, -1] *= 1024
    before, after = net(entries, levels, spans, tail), net(entries, levels, longer, tail)
    assert ((before[:, 0] - after[:, 0]).abs() > 1e-7).all()


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("B", [1, 3])
def test_lensnet_flops_match_torch_flop_counter(context: str, B: int) -> None:
    net = lensnet(context)
    entries, levels, spans, tail = lens_inputs(B)
    mask = torch.ones(B, W, dtype=torch.bool)
    assert counted_flops(net, entries, levels, spans, tail, mask) == net.flops(W, R, batch=B)


@pytest.mark.parametrize("context", CONTEXTS)
def test_lensnet_gradients_reach_every_parameter_and_bf16_runs(context: str) -> None:
    net = lensnet(context)
    entries, levels, spans, tail = lens_inputs()
    net(entries, levels, spans, tail).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    net_bf16 = net.to(torch.bfloat16)
    scores = net_bf16(entries.bfloat16(), levels, spans, tail.bfloat16())
    assert scores.dtype == torch.bfloat16 and torch.isfinite(scores).all()


def test_lensnet_rejects_bad_inputs() -> None:
    net = lensnet()
    entries, levels, spans, tail = lens_inputs()
    with pytest.raises(ValueError, match="tail"):
        net(entries, levels, spans, tail[:, :0])
    with pytest.raises(ValueError, match=r"\[B, W\]"):
        net(entries, levels[:, :-1], spans, tail)
    with pytest.raises(ValueError, match="dim=32"):
        net(entries[..., :-1], levels, spans, tail[..., :-1])
    with pytest.raises(ValueError, match=r"'causal'; allowed: bidirectional\|cross"):
        LensNet(D, 16, 1, 4, context="causal")
    with pytest.raises(ValueError, match="heads"):
        LensNet(D, 16, 1, 3)


def test_lensnet_starts_neutral() -> None:
    """At init |score| stays below the allocator's default thresholds: no edits before training."""
    cfg = MCConfig()
    entries, levels, spans, tail = lens_inputs(B=4)
    scores = build_lensnet(cfg, D)(entries, levels, spans, tail)
    assert scores.abs().max() < min(cfg.allocator_expand_threshold, cfg.allocator_collapse_threshold)


# ---------------------------------------------------------------------------------------- factories
def test_factories_read_the_knobs() -> None:
    cfg = MCConfig(block_size=8, gistnet_layers=3, gistnet_heads=2, gistnet_pooling="first", gistnet_head="linear",
                   lensnet_layers=1, lensnet_heads=8, lensnet_dim=64, lensnet_context="cross")
    g = build_gistnet(cfg, 48)
    assert (g.dim, g.block_size, g.layers, g.heads, g.pooling, g.head_kind, g.width) == (
        48, 8, 3, 2, "first", "linear", 48)
    assert build_gistnet(cfg, 48, width=16).width == 16
    lens = build_lensnet(cfg, 48)
    assert (lens.dim, lens.hidden, lens.layers, lens.heads, lens.context) == (48, 64, 1, 8, "cross")


def test_factories_name_the_flag_when_heads_do_not_divide() -> None:
    with pytest.raises(ConfigError, match="--gistnet_heads"):
        build_gistnet(MCConfig(gistnet_heads=5), 48)
    with pytest.raises(ValueError, match="--gistnet_heads"):
        build_gistnet(MCConfig(gistnet_heads=4), 48, width=18)
    with pytest.raises(ConfigError, match=r"--lensnet_heads \(3\) must divide --lensnet_dim \(128\)"):
        build_lensnet(MCConfig(lensnet_heads=3, lensnet_dim=128), 48)


# ---------------------------------------------------------------------------------------- dtype
def test_aux_dtype_explicit_and_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_aux_dtype("fp32", cpu) == torch.float32
    assert resolve_aux_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_aux_dtype("auto", cpu) == torch.float32
    assert resolve_aux_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match=r"--mc_aux_dtype: got 'fp16'; allowed: auto\|fp32\|bf16"):
        resolve_aux_dtype("fp16", cpu)


@pytest.mark.parametrize(("capability", "supported", "expected"), [
    ((9, 0), True, torch.bfloat16),
    ((8, 0), True, torch.bfloat16),
    ((7, 5), True, torch.float32),  # Turing: bf16 only emulated
    ((8, 6), False, torch.float32),
])
def test_aux_dtype_auto_on_cuda(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], supported: bool,
                                expected: torch.dtype) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert resolve_aux_dtype("auto", torch.device("cuda", 0)) == expected
    assert native_bf16("cpu") is False


def test_aux_dtype_auto_without_cuda_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_aux_dtype("auto", "cuda") == torch.float32
