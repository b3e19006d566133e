"""Property tests of the training layouts: every random variant is a legal working context."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext_plugin.context import WorkingContext
from megacontext_plugin.focus.budget import minimal_length
from megacontext_plugin.training.layouts import PAD_LEVEL, sample_layouts
from megacontext_plugin.training.packing import build_index


@st.composite
def layout_args(draw):
    K = draw(st.sampled_from([2, 4, 8]))
    T = draw(st.integers(min_value=4 * K, max_value=300))
    recent = draw(st.integers(min_value=1, max_value=T // 4))
    lo = minimal_length(T, K, recent)
    budget = draw(st.integers(min_value=max(lo, recent), max_value=T))
    return T, K, recent, budget, draw(st.integers(0, 2**32 - 1)), draw(st.integers(2, 5)), draw(st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(layout_args())
def test_layouts_are_legal_padded_and_baseline_first(args) -> None:
    T, K, recent, budget, seed, V, B = args
    L = sample_layouts(B, V, T, K, budget, recent, np.random.default_rng(seed))
    assert L.levels_RW.shape == (B * V, budget)
    for r in range(B * V):
        n = int(L.lengths_R[r])
        assert (L.levels_RW[r, n:] == PAD_LEVEL).all() and (L.levels_RW[r, :n] != PAD_LEVEL).all()
        lv, ix = L.levels_RW[r, :n], L.indices_RW[r, :n]
        assert (L.starts_RW[r, :n] == ix * K ** lv).all() and (L.ends_RW[r, :n] == (ix + 1) * K ** lv).all()
        if r % V == 0:
            assert n == budget and (lv == 0).all() and L.ends_RW[r, n - 1] == T
        else:
            WorkingContext(lv, ix, K, T).validate(recent_tokens=recent, budget=budget)
    horizon = min(recent, budget)
    index = build_index(L, T, K, 1 + max(int(L.levels_RW.max()), 0), horizon, device=torch.device("cpu"))
    assert bool((index.levels_RW.gather(1, index.tail_RH) == 0).all())  # the horizon is raw in every row


@settings(max_examples=40, deadline=None)
@given(layout_args())
def test_pair_masks_mark_exactly_the_gists_the_other_variant_refines(args) -> None:
    T, K, recent, budget, seed, V, _ = args
    L = sample_layouts(1, max(V, 3), T, K, budget, recent, np.random.default_rng(seed))
    index = build_index(L, T, K, 1 + int(L.levels_RW.max()), 1, device=torch.device("cpu"))
    V = L.variants
    cover = {}
    for v in range(1, V):
        n = int(L.lengths_R[v])
        cover[v] = np.repeat(L.levels_RW[v, :n], L.ends_RW[v, :n] - L.starts_RW[v, :n])
    pairs = [(i, j) for i in range(1, V) for j in range(i + 1, V)]
    for p, (i, j) in enumerate(pairs):
        for own, other, mask in ((j, i, index.refined_BPW[0, p]), (i, j, index.coarser_BPW[0, p])):
            n = int(L.lengths_R[own])
            want = np.zeros(L.width, dtype=bool)
            for w in range(n):
                s, e, lv = L.starts_RW[own, w], L.ends_RW[own, w], L.levels_RW[own, w]
                want[w] = lv > 0 and bool((cover[other][s:e] < lv).any())
            assert np.array_equal(mask.numpy(), want)


@settings(max_examples=50, deadline=None)
@given(layout_args())
def test_entry_saliency_is_each_gists_peak_relative_to_its_rows_top(args) -> None:
    from megacontext_plugin.training.guided import entry_saliency

    T, K, recent, budget, seed, V, B = args
    rng = np.random.default_rng(seed)
    L = sample_layouts(B, V, T, K, budget, recent, rng)
    saliency_BT = rng.exponential(size=(B, T)) * (rng.uniform(size=(B, T)) < 0.3)  # sparse, some rows all 0
    got = entry_saliency(saliency_BT, L)
    assert got.shape == L.levels_RW.shape and got.dtype == np.float32
    for r in range(B * V):
        n = int(L.lengths_R[r])
        peaks = np.array([saliency_BT[r // V, s:e].max() if lv > 0 else 0.0 for lv, s, e in
                          zip(L.levels_RW[r, :n], L.starts_RW[r, :n], L.ends_RW[r, :n], strict=True)])
        want = peaks / peaks.max() if peaks.max() > 0 else peaks
        np.testing.assert_allclose(got[r, :n], want, rtol=1e-6)
        assert (got[r, n:] == 0).all()
