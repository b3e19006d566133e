"""MCController on batches whose length T varies (chat SFT) and whose targets hold -1 anywhere.

``process_batch`` takes any T up to the model's ``sequence_len`` and returns None exactly when
``can_compress(T)`` is False; what only T decides is computed once per T; losses count
supervised targets only, and a batch with none gives finite, zero-signal losses.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from test_controller import VOCAB, D, T, make_controller, small_cfg, tiny_model

from megacontext_plugin.training import controller as controller_module
from megacontext_plugin.training import losses
from megacontext_plugin.training.controller import MCBatch, MCController
from megacontext_plugin.training.flops import vanilla_step_flops
from megacontext_plugin.training.layouts import LayoutPrefetcher


def batch_of(seed: int, length: int, batch: int = 2, masked: float = 0.3,
             pad_B: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """``x[B, length]``, ``y[B, length]`` with a random fraction ``masked`` of targets at -1, like
    SFT's non-assistant tokens; row ``b`` is right-padded (targets -1) after ``pad_B[b]`` tokens."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, VOCAB, (batch, length + 1), generator=g)
    x, y = xy[:, :-1].clone(), xy[:, 1:].clone()
    y[torch.rand(batch, length, generator=g) < masked] = -1
    for b, real in enumerate(pad_B):
        y[b, real:] = -1
        x[b, real:] = 0
    return x, y


def fake_nll(b: MCBatch, seed: int = 0, unsupervised: float = 0.0) -> torch.Tensor:
    """Per-entry NLL as the host gives it (``unsupervised`` where the target is -1, 0 on padding)."""
    g = torch.Generator().manual_seed(seed)
    nll_RW = torch.rand(b.targets_RW.shape, generator=g) * 4
    return torch.where(b.targets_RW >= 0, nll_RW, torch.full_like(nll_RW, unsupervised) * b.index.valid_RW)


@functools.cache
def shared_controller() -> MCController:
    """One controller for the property test (building the aux nets per example would dominate)."""
    return make_controller(small_cfg(mc_position_scheme="span_center_scaled"))


@functools.cache
def shared_wte() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(VOCAB, D)


@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, T), batch=st.integers(1, 2), masked=st.sampled_from([0.0, 0.5, 1.0]),
       pad=st.booleans(), seed=st.integers(0, 2**16), step=st.integers(0, 12))
def test_any_length_and_mask_either_skips_or_packs_only_real_targets(length: int, batch: int, masked: float,
                                                                      pad: bool, seed: int, step: int) -> None:
    c = shared_controller()
    pad_B = tuple(int(v) for v in np.random.default_rng(seed).integers(1, length + 1, batch)) if pad else ()
    x, y = batch_of(seed, length, batch, masked, pad_B)
    b = c.process_batch(x, y, shared_wte(), step)
    assert (b is None) == (not c.can_compress(length))
    if b is None:
        return
    L_ = b.layouts
    assert b.budget == c.budget_at(step, length) < length and b.num_levels == c.length_plan(length).num_levels
    V = L_.variants
    rows_RW = torch.arange(batch * V)[:, None].expand_as(b.targets_RW) // V
    ends_RW = torch.from_numpy(L_.ends_RW)
    valid_RW = torch.from_numpy(L_.valid_RW)
    want_RW = torch.where(valid_RW, y[rows_RW, (ends_RW - 1).clamp_min(0)], torch.full_like(b.targets_RW, -1))
    assert torch.equal(b.targets_RW, want_RW)  # y's own target (or its -1) after each span; -1 on padding
    assert bool(torch.isin(b.targets_RW, torch.cat([y.reshape(-1), torch.tensor([-1])])).all())
    out = c.compute_losses(b, fake_nll(b, seed, unsupervised=50.0))
    assert torch.isfinite(out.total)
    assert all(bool(torch.isfinite(v)) for v in out.terms.values())
    assert all(bool(torch.isfinite(v).all()) for v in out.pairs.values() if v.is_floating_point())
    for name in ("token_loss", "gist_loss", "delta_nll_h", "adv_delta_mean", "tail_supervised_frac"):
        assert bool(torch.isfinite(out.metrics[name])), name
    assert float(out.metrics["token_loss"]) < 4  # the 50s of unsupervised entries never count


def test_short_batches_are_skipped_before_any_work() -> None:
    c = make_controller(small_cfg())
    wte = nn.Embedding(VOCAB, D)
    tail = c.recent
    assert not c.can_compress(tail + c.cfg.block_size - 1)  # no complete block before the protected tail
    assert not c.can_compress(0) and c.can_compress(T + 1)  # longer than the window: compressed into it
    assert c.can_compress(T)
    short = min(t for t in range(1, T + 1) if c.can_compress(t))
    assert c.process_batch(*batch_of(0, short - 1), wte, 0) is None
    assert c.process_batch(*batch_of(0, short), wte, 0) is not None
    assert c.budget_at(0, short - 1) == short - 1  # too short: the budget would hold every token


def test_budget_and_flops_default_to_the_models_length_and_follow_t() -> None:
    c = make_controller(small_cfg(), total_steps=50)
    assert [c.budget_at(s) for s in range(50)] == [c.budget_at(s, T) for s in range(50)]
    assert c.budget_at(0, 64) < c.budget_at(0, T)

    def fpt(width: int) -> int:
        return 1000 + width

    assert c.step_flops(fpt, 4, 3) == c.step_flops(fpt, 4, 3, T)
    assert c.step_flops(fpt, 4, 3, 64).base == 4 * c.cfg.num_variants * c.budget_at(3, 64) * fpt(c.budget_at(3, 64))
    plain = c.step_flops(fpt, 4, 3, 20)  # not compressible: the plain forward's FLOPs, no aux nets
    assert (plain.base, plain.gistnet, plain.lensnet) == (vanilla_step_flops(fpt, batch=4, sequence_len=20), 0, 0)


def test_what_only_t_decides_is_computed_once_per_t(monkeypatch: pytest.MonkeyPatch) -> None:
    c = make_controller(small_cfg())
    calls: dict[str, int] = {"floor": 0, "levels": 0}

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(controller_module, "smallest_useful_budget",
                        counted("floor", controller_module.smallest_useful_budget))
    monkeypatch.setattr(controller_module, "max_tree_level", counted("levels", controller_module.max_tree_level))
    wte = nn.Embedding(VOCAB, D)
    for step in range(3):
        for length in (100, 77, 100, 20):
            c.can_compress(length)
            c.budget_at(step, length)
            c.process_batch(*batch_of(step, length), wte, step)
    assert calls == {"floor": 3, "levels": 3}  # one per new length (100, 77, 20); T itself was done at init
    c.process_batch(*batch_of(0, T), wte, 0)
    assert calls == {"floor": 3, "levels": 3}


def _run(lengths: list[int], seed: int = 7) -> list[dict[str, float | None]]:
    c = make_controller(small_cfg(mc_seed=seed, mc_aux_lr=1e-2))
    model = tiny_model()
    history: list[dict[str, float | None]] = []
    for step, length in enumerate(lengths):
        x, y = batch_of(100 + step, length, masked=0.4, pad_B=(length, max(1, length // 2)))
        b = c.process_batch(x, y, model.wte, step)
        if b is None:
            history.append({"skipped": 1.0})
            continue
        nll = model(inputs_embeds=b.inputs_RWD, targets=b.targets_RW, cos_sin=b.cos_sin, loss_reduction="none")
        out = c.compute_losses(b, nll.view_as(b.targets_RW))
        out.total.backward()
        c.step_aux()
        model.zero_grad(set_to_none=True)
        history.append({k: None if torch.isnan(v) else float(v) for k, v in out.metrics.items()}
                       | {"total": float(out.total.detach())})
    c.close()
    return history


def test_a_run_over_mixed_lengths_is_bit_identical_for_a_seed() -> None:
    lengths = [T, 64, 30, 97, 97, 64]  # a skip, a repeat (the look-ahead hits), changes (it misses)
    a, b = _run(lengths), _run(lengths)
    assert a == b
    assert a[2] == {"skipped": 1.0} and all("total" in h for i, h in enumerate(a) if i != 2)
    assert _run(lengths[:2], seed=8) != a[:2]


def test_layouts_are_the_same_whether_a_prefetch_hit_or_not() -> None:
    # (B, V, T, K, budget, recent) requests whose lengths and budgets change now and then
    requests = [(2, 4, 128, 8, 96, 16), (2, 4, 128, 8, 96, 16), (2, 4, 64, 8, 48, 16), (2, 4, 64, 8, 40, 16),
                (1, 4, 100, 8, 80, 16), (2, 4, 128, 8, 64, 16), (2, 4, 128, 8, 64, 16)]
    eager, plain = LayoutPrefetcher(3), LayoutPrefetcher(3)
    for i, key in enumerate(requests):
        guess = key[4] if i % 2 else key[4] - 8  # half the look-aheads guess the next budget wrong
        got = eager.get(*key, next_budget=guess)
        want = plain.get(*key)
        for name in ("levels_RW", "indices_RW", "starts_RW", "ends_RW", "lengths_R"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), (i, name)
        assert eager.state() == plain.state()
    eager.close()
    plain.close()


def test_a_batch_without_any_target_gives_finite_zero_signal_losses() -> None:
    c = make_controller(small_cfg(mc_aux_lr=1e-2))
    model = tiny_model()
    x, y = batch_of(5, 96, masked=1.0)
    b = c.process_batch(x, y, model.wte, 0)
    assert b is not None and bool((b.targets_RW == -1).all())
    nll = model(inputs_embeds=b.inputs_RWD, targets=b.targets_RW, cos_sin=b.cos_sin, loss_reduction="none")
    out = c.compute_losses(b, nll.view_as(b.targets_RW))
    assert torch.isfinite(out.total)
    for name in ("token_loss", "gist_loss", "lens_bt"):
        assert float(out.terms[name].detach()) == 0.0, name
    assert not bool(out.pairs["supervised"].any())
    assert bool((out.pairs["dnll"] == 0).all() and (out.pairs["adv"] == 0).all())
    assert float(out.metrics["pairs_kept"]) == 0 and float(out.metrics["tail_supervised_frac"]) == 0
    out.total.backward()
    grads = [p.grad for p in c.aux_parameters() if p.grad is not None]
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    c.step_aux()
    assert c.adv_var_ema is not None and bool(torch.isfinite(c.adv_var_ema))
    # the next supervised batch starts the advantage scale afresh and trains as usual
    b2 = c.process_batch(*batch_of(6, 96, masked=0.0), model.wte, 1)
    nll2 = model(inputs_embeds=b2.inputs_RWD, targets=b2.targets_RW, cos_sin=b2.cos_sin, loss_reduction="none")
    out2 = c.compute_losses(b2, nll2.view_as(b2.targets_RW))
    assert torch.isfinite(out2.total) and float(out2.terms["lens_bt"].detach()) > 0


def test_only_supervised_targets_count_and_unsupervised_tails_give_no_signal() -> None:
    c = make_controller(small_cfg())
    x, y = batch_of(9, 100, masked=0.2, pad_B=(100, 60))  # row 1: right-padded SFT row, its tail all -1
    b = c.process_batch(x, y, nn.Embedding(VOCAB, D), 4)
    assert b is not None
    supervised_RW = b.targets_RW >= 0
    nll_RW = torch.where(supervised_RW, 1.0, 100.0) * b.index.valid_RW  # 100 must never be counted
    out = c.compute_losses(b, nll_RW)
    assert float(out.terms["token_loss"]) == pytest.approx(1.0)
    assert out.pairs["supervised"].tolist() == [True, False]
    assert bool((out.pairs["dnll"] == 0).all())  # every variant's supervised tail NLL is 1
    assert float(out.metrics["tail_supervised_frac"]) == 0.5
    # a genuine difference on row 0 is the whole gist loss; row 1 (no supervised tail) adds nothing
    V = b.layouts.variants
    nll_RW = nll_RW.clone()
    tail_RH = b.index.tail_RH
    bump_RW = torch.zeros_like(nll_RW).scatter_(1, tail_RH, 1.0) * supervised_RW
    bump_RW[V:] *= 7.0  # row 1's tail has no supervised entry: this bump is masked out anyway
    bump_RW[:V] *= torch.arange(V, dtype=torch.float32)[:, None]  # variant v of row 0: +v (baseline +0)
    out = c.compute_losses(b, nll_RW + bump_RW)
    assert out.pairs["dnll"][0].tolist() == pytest.approx(list(range(1, V)))
    assert out.pairs["dnll"][1].tolist() == [0.0] * (V - 1)
    assert float(out.terms["gist_loss"]) == pytest.approx(sum(range(1, V)) / (V - 1))
    assert bool((out.pairs["adv"][1] == 0).all())


def test_hard_negatives_are_chosen_among_masked_pairs_only() -> None:
    adv_BP = torch.tensor([[5.0, -4.0, 1.0], [9.0, 0.5, -3.0]])
    everything = torch.ones_like(adv_BP, dtype=torch.bool)
    for ratio in (0.1, 0.3, 0.5, 1.0):
        masked = losses.hard_negative_mask(adv_BP, ratio, everything)
        assert torch.equal(masked, losses.hard_negative_mask(adv_BP, ratio))
    first_row = torch.tensor([[True] * 3, [False] * 3])
    assert losses.hard_negative_mask(adv_BP, 0.5, first_row).tolist() == [[True, True, False], [False] * 3]
    assert not bool(losses.hard_negative_mask(adv_BP, 0.5, torch.zeros_like(first_row)).any())
    ones_RW = torch.ones(2, 4, dtype=torch.bool)
    nll_RW = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    tail_RH = torch.tensor([[2, 3], [2, 3]])
    assert losses.tail_nll(nll_RW, tail_RH, ones_RW).tolist() == losses.tail_nll(nll_RW, tail_RH).tolist() == [3.5, 7.5]
    some_RW = torch.tensor([[True, True, False, True], [True, True, False, False]])
    assert losses.tail_nll(nll_RW, tail_RH, some_RW).tolist() == [4.0, 0.0]
    assert losses.tail_supervised(some_RW, tail_RH).tolist() == [True, False]


def test_align_right_moves_each_conversation_to_the_end_and_keeps_full_rows() -> None:
    from megacontext_plugin.training.packing import align_right

    x = torch.tensor([[1, 2, 3, 4, 9, 9], [5, 6, 7, 8, 6, 5], [1, 1, 1, 1, 1, 1]])
    y = torch.tensor([[-1, 3, 4, -1, -1, -1], [6, 7, 8, 6, 5, 4], [-1, -1, -1, -1, -1, -1]])
    xa, ya = align_right(x, y)
    # row 0: supervised up to position 2, so it moves right by 3; its first token fills the front
    assert xa[0].tolist() == [1, 1, 1, 1, 2, 3] and ya[0].tolist() == [-1, -1, -1, -1, 3, 4]
    assert torch.equal(xa[1:], x[1:]) and torch.equal(ya[1:], y[1:])  # full row; row without targets
    assert sorted(ya[0][ya[0] >= 0].tolist()) == sorted(y[0][y[0] >= 0].tolist())  # no target lost or made up


def test_right_padded_batches_give_their_tails_targets_after_alignment() -> None:
    from megacontext_plugin.training.packing import align_right

    c = make_controller(small_cfg())
    x = torch.randint(0, VOCAB, (4, T), generator=torch.Generator().manual_seed(4))
    y = torch.roll(x, -1, 1)
    y[:, T // 2:] = -1  # SFT-like: every conversation ends halfway, right-padded
    wte = nn.Embedding(VOCAB, D)
    padded = c.process_batch(x, y, wte, 0)
    assert float(c.compute_losses(padded, fake_nll(padded)).metrics["tail_supervised_frac"]) == 0.0  # no signal
    aligned = c.process_batch(*align_right(x, y), wte, 0)
    assert float(c.compute_losses(aligned, fake_nll(aligned)).metrics["tail_supervised_frac"]) == 1.0
