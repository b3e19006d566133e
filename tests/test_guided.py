"""Guided variants (on-policy, teacher), the causal lens and focus that brings context."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from megacontext_plugin.config import MCConfig
from megacontext_plugin.context.working_context import WorkingContext
from megacontext_plugin.focus import FocusAllocator, FocusConfig
from megacontext_plugin.focus.cooldown import CooldownTracker
from megacontext_plugin.focus.selection import lend_to_neighbours, select_edits
from megacontext_plugin.training.controller import MCController
from megacontext_plugin.training.guided import (
    guided_prompt_layouts,
    horizon_saliency,
    teacher_config,
    teacher_scorer,
)
from megacontext_plugin.training.layouts import sample_layouts, with_guided

K = 4


def _l1_context(n_gists: int, raw_tail: int) -> WorkingContext:
    """``n_gists`` level-1 gists then ``raw_tail`` raw tokens."""
    levels = [1] * n_gists + [0] * raw_tail
    indices = list(range(n_gists)) + list(range(n_gists * K, n_gists * K + raw_tail))
    return WorkingContext(levels, indices, K, n_gists * K + raw_tail)


# ---- focus that brings context ------------------------------------------------------------------------
def test_neighbour_gets_its_anchor_utility_just_below_it() -> None:
    wc = _l1_context(6, 4)
    u = np.zeros(len(wc), dtype=np.float32)
    u[3] = 0.8
    lent = lend_to_neighbours(wc.levels, u, neighbours=2, threshold=0.3)
    assert lent[3] == np.float32(0.8)
    assert 0.79 < lent[2] < lent[3] and 0.79 < lent[1] < lent[2]
    assert lent[0] == 0 and lent[4] == 0  # only to the left, only as many as asked
    assert np.array_equal(lend_to_neighbours(wc.levels, u, neighbours=0, threshold=0.3), u)
    below = u.copy()
    below[3] = 0.2  # not a candidate: lends nothing
    assert np.array_equal(lend_to_neighbours(wc.levels, below, neighbours=2, threshold=0.3), below)


def test_neighbour_lending_stops_at_a_coarser_entry() -> None:
    wc = WorkingContext([2, 1, 1, 0, 0], [0, 4, 5, 24, 25], K, 26)
    u = np.array([0, 0, 0.9, 0, 0], dtype=np.float32)
    lent = lend_to_neighbours(wc.levels, u, neighbours=3, threshold=0.1)
    assert lent[1] > 0 and lent[0] == 0  # the level-2 gist is not a "word before"


def test_allocator_expands_the_gist_left_of_an_expansion_within_the_budget() -> None:
    wc = _l1_context(6, 4)
    u = np.zeros(len(wc), dtype=np.float32)
    u[3] = 0.8
    roomy = FocusConfig(budget=len(wc) + 2 * (K - 1), expand_threshold=0.3, recent_tokens=4, expand_neighbours=1)
    plan = select_edits(wc, u, roomy, CooldownTracker(0), 0, None)
    assert plan.expand.tolist() == [2, 3]
    tight = dataclasses.replace(roomy, budget=len(wc) + (K - 1))  # room for one: the anchor wins
    assert select_edits(wc, u, tight, CooldownTracker(0), 0, None).expand.tolist() == [3]
    off = dataclasses.replace(roomy, expand_neighbours=0)
    assert select_edits(wc, u, off, CooldownTracker(0), 0, None).expand.tolist() == [3]


def _by_start(utility_of_gist_at: dict[int, float]) -> Callable[[WorkingContext], np.ndarray]:
    """A scorer: the level-1 gist starting at token ``s`` scores ``utility_of_gist_at.get(s, 0)``, a
    coarser gist the best of the level-1 gists it covers; raw tokens 0."""
    def score(wc: WorkingContext) -> np.ndarray:
        u = np.zeros(len(wc), dtype=np.float32)
        for s, v in utility_of_gist_at.items():
            covers = (wc.levels > 0) & (wc.starts <= s) & (wc.ends > s)
            u[covers] = np.maximum(u[covers], v)
        return u
    return score


def _raw_gists(wc: WorkingContext, before: WorkingContext) -> list[int]:
    """Indices of the level-1 gists of ``before`` that are raw tokens in ``wc``."""
    raw = set(wc.starts[wc.levels == 0].tolist())
    return [int(i) for lv, i, s in zip(before.levels, before.indices, before.starts, strict=True)
            if lv == 1 and int(s) in raw]


def test_the_context_pass_opens_the_words_left_of_a_drilled_island_with_the_room_left() -> None:
    # one edit per round (the product's default): the anchor is opened in the first round and lends
    # nothing afterwards; the context pass that closes the refocus brings its left neighbour
    wc = _l1_context(8, 4)
    config = FocusConfig(budget=len(wc) + 2 * (K - 1), expand_threshold=0.1, recent_tokens=4, max_replacements=1,
                         iterations=4, expand_neighbours=1)
    out, report = FocusAllocator(config).refocus(wc, _by_start({5 * K: 0.8}))
    assert _raw_gists(out, wc) == [4, 5] and report.context_expands == 1 and report.expands == 2
    off, _ = FocusAllocator(dataclasses.replace(config, expand_neighbours=0)).refocus(wc, _by_start({5 * K: 0.8}))
    assert _raw_gists(off, wc) == [5]


def test_the_context_pass_takes_no_room_from_gists_worth_opening_on_their_own() -> None:
    # two anchors (gists 3 and 6) and room for two expansions: both anchors open, no neighbour. With
    # room for three, the better anchor's neighbour (2) comes before the other's (5); with four, both.
    wc = _l1_context(8, 4)
    scorer = _by_start({3 * K: 0.8, 6 * K: 0.5})
    opened = []
    for room in (2, 3, 4):
        config = FocusConfig(budget=len(wc) + room * (K - 1), expand_threshold=0.1, recent_tokens=4,
                             max_replacements=1, iterations=4, expand_neighbours=1)
        opened.append(_raw_gists(FocusAllocator(config).refocus(wc, scorer)[0], wc))
    assert opened == [[3, 6], [2, 3, 6], [2, 3, 5, 6]]


def test_the_context_pass_follows_a_run_of_level_1_gists_and_the_cooldown() -> None:
    # gists: a level-2 gist over tokens [0, 16) then level-1 gists 4..9; the anchor is gist 7
    wc = WorkingContext([2, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], [0, 4, 5, 6, 7, 8, 9, 40, 41, 42, 43], K, 44)
    config = FocusConfig(budget=100, expand_threshold=0.1, recent_tokens=4, max_replacements=1, iterations=2,
                         expand_neighbours=5)
    out, _ = FocusAllocator(config).refocus(wc, _by_start({7 * K: 0.8}))
    assert _raw_gists(out, wc) == [4, 5, 6, 7]  # stops at the level-2 gist, not after 5 neighbours
    cooled = FocusAllocator(config)
    cooled.cooldown_tracker.record(np.array([1]), np.array([5]), 0)  # gist 5 flipped at this refocus
    out, report = cooled.refocus(wc, _by_start({7 * K: 0.8}))
    assert _raw_gists(out, wc) == [4, 6, 7] and report.rejected_cooldown == 1


def test_a_deferred_context_pass_serves_the_anchors_of_every_call_since_the_last_and_resumes() -> None:
    wc = _l1_context(8, 4)
    config = FocusConfig(budget=100, expand_threshold=0.1, recent_tokens=4, max_replacements=1, iterations=1,
                         expand_neighbours=1)
    scorer = _by_start({3 * K: 0.8, 6 * K: 0.5})
    alloc = FocusAllocator(config)
    first, report = alloc.refocus(wc, scorer, context_pass=False)
    assert _raw_gists(first, wc) == [3] and report.context_expands == 0
    resumed = FocusAllocator(config)
    resumed.load_state_dict(alloc.state_dict())
    for a in (alloc, resumed):
        second, report = a.refocus(first, scorer)
        assert _raw_gists(second, wc) == [2, 3, 5, 6] and report.context_expands == 2


# ---- teacher ----------------------------------------------------------------------------------------
def test_horizon_saliency_touches_no_model_gradient_and_finds_the_dependency() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    T, H = 12, 2

    def nll_fn(emb_BTD: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
        # the horizon's loss depends on token 4 only; every other position on itself
        nll = (emb_BTD * weight).sum(-1).square()
        nll = nll.clone()
        nll[:, -H:] = (emb_BTD[:, 4] * weight).sum(-1, keepdim=True).square()
        return nll

    emb = torch.randn(2, T, 3)
    sal = horizon_saliency(nll_fn, emb, torch.zeros(2, T, dtype=torch.long), H)
    assert weight.grad is None
    assert sal.shape == (2, T)
    assert np.all(sal[:, 4] > 0) and np.count_nonzero(sal) == 2
    masked = horizon_saliency(nll_fn, emb, torch.full((2, T), -1), H)  # no supervised target: nothing
    assert not masked.any()


def test_the_teacher_pass_with_the_head_on_the_horizon_gives_the_full_heads_saliency() -> None:
    from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig
    from megacontext_plugin.training.run import full_context_nll

    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=64, sequence_len=32, n_layer=2, n_head=2, n_embd=32))
    for block in model.blocks:  # zero-initialised projections would leave the trunk an identity
        torch.nn.init.normal_(block.proj.weight, std=0.1)
        torch.nn.init.normal_(block.fc_out.weight, std=0.1)
    x = torch.randint(0, 64, (2, 32))
    y = torch.roll(x, -1, dims=1)
    y[1, -2] = -1  # an unsupervised horizon target stays out of the loss either way
    H = 6

    def whole(emb_BTD: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
        T = emb_BTD.size(1)
        return model.forward_embeds(emb_BTD, x, y_BT, model.cos[:, :T], model.sin[:, :T]).view_as(y_BT)

    sliced = full_context_nll(model, x, H)
    emb = model.wte(x)
    assert sliced(emb, y).shape == (2, H)
    assert isinstance(model.lm_head, torch.nn.Linear)  # restored after the pass
    reference = horizon_saliency(whole, emb, y, H)
    fast = horizon_saliency(sliced, emb, y, H)
    assert reference.max() > 0
    np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-6 * reference.max())
    assert model.lm_head.weight.grad is None


def test_teacher_drills_down_to_the_salient_tokens_and_keeps_the_layout_legal() -> None:
    T, H, tail = 256, 8, 8
    prompt = T - H
    saliency = np.full((1, T), 1e-3)
    saliency[0, 100:103] = 5.0  # what the horizon depends on
    budget = 40
    config = teacher_config(FocusConfig(budget=budget - H, recent_tokens=tail, expand_neighbours=1))
    start = WorkingContext.coarsest(prompt, K, tail)
    [[wc]] = guided_prompt_layouts(prompt, K, tail, 0, 1, config, rounds=4, lens_score=None,
                                   saliency_BT=saliency, batch=1)
    wc.validate(recent_tokens=tail, budget=budget - H)
    raw = set(wc.starts[wc.levels == 0].tolist())
    assert {100, 101, 102} <= raw
    assert len(wc) > len(start)
    # the second teacher variant's lower share threshold expands at least as much
    flat = teacher_scorer(saliency, start, threshold=0.9)([start])[0]
    assert np.count_nonzero(flat) <= 1


def test_teacher_variants_alternate_opening_the_neighbours_and_not() -> None:
    config = FocusConfig(budget=64, recent_tokens=8, expand_neighbours=2)
    assert [teacher_config(config, k).expand_neighbours for k in range(4)] == [2, 0, 2, 0]
    assert [teacher_config(config, k).max_replacements for k in range(4)] == [3, 1, 3, 1]
    T, H, tail = 256, 8, 8
    saliency = np.full((1, T), 1e-3)
    saliency[0, 100:103] = 5.0  # one island, inside block 25 (tokens 100-103)
    run = FocusConfig(budget=40 - H, recent_tokens=tail, expand_neighbours=1)
    [[with_words, island_only]] = guided_prompt_layouts(T - H, K, tail, 0, 2, run, rounds=4, lens_score=None,
                                                        saliency_BT=saliency, batch=1)
    for wc in (with_words, island_only):
        wc.validate(recent_tokens=tail, budget=40 - H)
        assert {100, 101, 102} <= set(wc.starts[wc.levels == 0].tolist())
    assert 96 in with_words.starts[with_words.levels == 0]  # block 24, the words before, raw
    assert 96 not in island_only.starts[island_only.levels == 0]  # the island alone


def test_with_guided_puts_guided_rows_after_the_baseline() -> None:
    rng = np.random.default_rng(0)
    T, H, budget = 64, 4, 40
    sampled = sample_layouts(2, 3, T, K, budget, 2 * H, rng)
    prompt_wc = WorkingContext.coarsest(T - H, K, H)
    merged = with_guided(sampled, [[prompt_wc], [prompt_wc]], H)
    assert merged.variants == 4
    for b in range(2):
        assert np.array_equal(merged.levels_RW[b * 4], sampled.levels_RW[b * 3])  # baseline first
        n = len(prompt_wc) + H
        assert merged.lengths_R[b * 4 + 1] == n and not merged.levels_RW[b * 4 + 1, n - H:n].any()
        assert np.array_equal(merged.levels_RW[b * 4 + 2:b * 4 + 4], sampled.levels_RW[b * 3 + 1:b * 3 + 3])


# ---- the controller: causal lens, guided rows -----------------------------------------------------------
def _controller(**knobs) -> tuple[MCController, torch.nn.Embedding]:
    cfg = MCConfig(mc=True, block_size=K, mc_horizon=4, allocator_recent_tokens=4, mc_train_wc_length=0.5,
                   lensnet_dim=16, lensnet_heads=2, gistnet_layers=1, gistnet_heads=2, lensnet_layers=1,
                   allocator_expand_threshold=0.0, **knobs)
    torch.manual_seed(0)
    wte = torch.nn.Embedding(32, 16)
    return MCController(cfg, dim=16, head_dim=8, sequence_len=64, total_steps=10), wte


def test_lens_scores_never_see_the_horizon() -> None:
    x = torch.randint(0, 32, (2, 64), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    x2, y2 = x.clone(), y.clone()
    x2[:, -4:] = (x2[:, -4:] + 7) % 32  # other horizon tokens: LensNet must not notice
    y2[:, -5:] = (y2[:, -5:] + 7) % 32
    scores = []
    for xi, yi in ((x, y), (x2, y2)):
        ctrl, wte = _controller(mc_onpolicy_variants=1, mc_teacher_variants=0, mc_num_random_variants=2)
        batch = ctrl.process_batch(xi, yi, wte, step=5)
        scores.append(batch.scores_RW.detach())
        ctrl.close()
    assert scores[0].abs().sum() > 0
    assert torch.equal(scores[0], scores[1])


def test_process_batch_rows_are_baseline_guided_random() -> None:
    ctrl, wte = _controller(mc_onpolicy_variants=1, mc_teacher_variants=2, mc_num_random_variants=1)
    x = torch.randint(0, 32, (3, 64), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, dims=1)

    def nll_fn(emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return emb.square().sum(-1).cumsum(1) / 100.0

    batch = ctrl.process_batch(x, y, wte, step=9, nll_fn=nll_fn)
    assert batch.layouts.variants == 5 and batch.rows == 15
    without = ctrl.process_batch(x, y, wte, step=9)  # no teacher pass: its rows are random ones
    assert without.layouts.variants == 5
    H = ctrl.cfg.mc_horizon
    for r in range(batch.rows):
        n = int(batch.layouts.lengths_R[r])
        assert not batch.layouts.levels_RW[r, n - H:n].any()  # the horizon is raw in every row
    ctrl.close()


@pytest.mark.parametrize("neighbours", [0, 1])
def test_on_policy_layouts_are_what_the_allocator_makes(neighbours: int) -> None:
    T, H, tail, budget = 128, 4, 4, 40
    config = FocusConfig(budget=budget - H, recent_tokens=tail, expand_threshold=0.1, expand_neighbours=neighbours)
    start = WorkingContext.coarsest(T - H, K, tail)

    def score(wcs: list[WorkingContext]) -> list[np.ndarray]:  # a fixed scorer: newest gists matter
        return [np.where(wc.levels > 0, wc.starts / T, 0.0).astype(np.float32) for wc in wcs]

    [[guided]] = guided_prompt_layouts(T - H, K, tail, 1, 0, config, rounds=2, lens_score=score,
                                       saliency_BT=None, batch=1)
    alloc = FocusAllocator(dataclasses.replace(config, iterations=1))
    wc = start
    for _ in range(2):
        wc, _ = alloc.refocus(wc, lambda w: score([w])[0])
    assert guided == wc


def test_on_policy_variants_close_each_refocus_call_with_the_context_pass_as_inference_does() -> None:
    # two refocus calls of three single-edit rounds: inference's allocator runs its context pass after
    # each call, and so must the on-policy variant, whose rounds are separate batched calls. The budget
    # holds the first call's neighbour and two more expansions: a pass deferred to the end of the
    # second call would find the room taken by a third.
    T, H, tail, budget = 128, 4, 4, 32
    config = FocusConfig(budget=budget - H, recent_tokens=tail, expand_threshold=0.1, max_replacements=1,
                         iterations=3, expand_neighbours=1)
    start = WorkingContext.coarsest(T - H, K, tail)
    score = _by_start({9 * K: 0.9, 21 * K: 0.7, 25 * K: 0.6, 17 * K: 0.5, 13 * K: 0.4})
    [[guided]] = guided_prompt_layouts(T - H, K, tail, 1, 0, config, rounds=2,
                                       lens_score=lambda wcs: [score(w) for w in wcs], saliency_BT=None, batch=1)
    inference = FocusAllocator(config)
    wc = start
    reports = []
    for _ in range(2):
        wc, report = inference.refocus(wc, score)
        reports.append(report.context_expands)
    assert guided == wc and reports == [1, 0] and len(wc) == budget - H


def test_on_policy_variants_run_every_allocator_round_inference_runs() -> None:
    # one edit per round, three rounds per refocus call (as inference's allocator): two refocus calls
    # are six scored rounds, so the on-policy layout drills as deep as inference's would
    T, H, tail, budget = 128, 4, 4, 60
    config = FocusConfig(budget=budget - H, recent_tokens=tail, expand_threshold=0.1, max_replacements=1,
                         iterations=3)
    start = WorkingContext.coarsest(T - H, K, tail)
    calls = []

    def score(wcs: list[WorkingContext]) -> list[np.ndarray]:  # a fixed scorer: newest gists matter
        calls.append(len(wcs))
        return [np.where(wc.levels > 0, 0.2 + wc.starts / T, 0.0).astype(np.float32) for wc in wcs]

    [[guided]] = guided_prompt_layouts(T - H, K, tail, 1, 0, config, rounds=2, lens_score=score,
                                       saliency_BT=None, batch=1)
    assert len(calls) == 6
    alloc = FocusAllocator(dataclasses.replace(config, iterations=1))
    wc = start
    for _ in range(6):
        wc, _ = alloc.refocus(wc, lambda w: score([w])[0])
    assert guided == wc and len(guided) > len(start) + 2 * (K - 1)
