"""Entry positions, per-row rotary tables (nanochat-identical), Gaussian RoPE damping, PositionalCache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext_plugin.context.positions import (
    POSITION_SCHEMES,
    PositionalCache,
    entry_positions,
    rotary_cos_sin,
    span_sigma,
)

SCHEMES = ("ordinal", "span_center_scaled")


def nanochat_table(seq_len: int, head_dim: int, base: float = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """nanochat's GPT._precompute_rotary_embeddings, written out from its formula: (1, T, 1, head_dim/2) bf16."""
    channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32)
    inv_freq = 1.0 / (base ** (channel_range / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    cos, sin = freqs.cos().bfloat16(), freqs.sin().bfloat16()
    return cos[None, :, None, :], sin[None, :, None, :]


def tiling(spans: list[int], start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ends = start + torch.tensor(spans).cumsum(0)
    return ends - torch.tensor(spans), ends


def batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded starts, ends, mask of several tilings (padding: start = end = 0)."""
    width = max(len(r) for r in rows)
    starts = torch.zeros(len(rows), width, dtype=torch.int64)
    ends = torch.zeros_like(starts)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, spans in enumerate(rows):
        s, e = tiling(spans)
        starts[b, : len(spans)], ends[b, : len(spans)], mask[b, : len(spans)] = s, e, True
    return starts, ends, mask


# ---------------------------------------------------------------------------------------- schemes
def test_ordinal_is_the_entry_index() -> None:
    starts, ends = tiling([32, 32, 8, 1, 1])
    pos = entry_positions(starts[None], ends[None], "ordinal", max_position=5)
    assert pos.dtype == torch.float32
    assert pos.tolist() == [[0, 1, 2, 3, 4]]


def test_span_center_scaled_compresses_token_centres_into_the_entry_range() -> None:
    starts, ends = tiling([4, 4, 1, 1, 1])  # centres 1.5, 5.5, 8, 9, 10
    pos = entry_positions(starts[None], ends[None], "span_center_scaled", max_position=100)[0]
    expected = (torch.tensor([1.5, 5.5, 8, 9, 10]) - 1.5) * 4 / 8.5
    torch.testing.assert_close(pos, expected)
    assert pos[0] == 0 and pos[-1] == 4


def test_span_center_scaled_equals_ordinal_when_every_entry_is_a_raw_token() -> None:
    starts, ends = tiling([1] * 37, start=1000)
    scaled = entry_positions(starts[None], ends[None], "span_center_scaled", max_position=37)
    assert torch.equal(scaled, entry_positions(starts[None], ends[None], "ordinal", max_position=37))


def test_span_center_scaled_ignores_padding() -> None:
    starts, ends, mask = batch([[4, 4, 1, 1, 1], [8, 1]])
    pos = entry_positions(starts, ends, "span_center_scaled", max_position=5, mask_BW=mask)
    alone = entry_positions(starts[1:, :2], ends[1:, :2], "span_center_scaled", max_position=2)
    torch.testing.assert_close(pos[1, :2], alone[0])
    assert pos[1, 2:].tolist() == [1.0, 1.0, 1.0]  # padding sits on the last real entry


def test_single_entry_sits_at_zero_and_no_entries_is_empty() -> None:
    starts, ends = tiling([64])
    empty = torch.zeros(2, 0, dtype=torch.int64)
    for scheme in SCHEMES:
        assert entry_positions(starts[None], ends[None], scheme, max_position=1).tolist() == [[0.0]]
        assert entry_positions(empty, empty, scheme, max_position=1).shape == (2, 0)


def test_unknown_scheme_lists_the_allowed_ones() -> None:
    starts, ends = tiling([1, 1])
    with pytest.raises(ValueError, match=r"'rope_yarn'.*ordinal\|span_center_scaled"):
        entry_positions(starts[None], ends[None], "rope_yarn", max_position=8)
    assert set(POSITION_SCHEMES) == set(SCHEMES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_more_entries_than_the_trained_range_is_an_error(scheme: str) -> None:
    starts, ends = tiling([1] * 9)
    with pytest.raises(ValueError, match=r"trained range \[0, 8\)"):
        entry_positions(starts[None], ends[None], scheme, max_position=8)
    assert entry_positions(starts[None], ends[None], scheme, max_position=9).max() == 8


def test_mismatched_shapes_are_rejected() -> None:
    starts, ends = tiling([1, 1, 1])
    with pytest.raises(ValueError, match=r"\[B, W\]"):
        entry_positions(starts, ends, "ordinal", max_position=8)
    with pytest.raises(ValueError, match="mask"):
        entry_positions(starts[None], ends[None], "ordinal", max_position=8, mask_BW=torch.ones(1, 2, dtype=torch.bool))


@dataclass
class _Layout:
    """The two attributes of a WorkingContext that positions read."""

    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def test_one_working_context_form_returns_numpy() -> None:
    layout = _Layout(np.array([0, 32, 40]), np.array([32, 40, 41]))
    ordinal = entry_positions(layout, "ordinal")
    assert ordinal.dtype == np.int64 and ordinal.tolist() == [0, 1, 2]
    scaled = entry_positions(layout, "span_center_scaled")
    assert scaled.dtype == np.float32 and scaled[0] == 0 and scaled[-1] == 2


rows_strategy = st.lists(
    st.lists(st.sampled_from([1, 1, 1, 4, 16, 64, 1024, 2**20]), min_size=1, max_size=40), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, slack=st.integers(0, 50), scheme=st.sampled_from(SCHEMES))
def test_positions_stay_in_range_and_in_order(rows: list[list[int]], slack: int, scheme: str) -> None:
    starts, ends, mask = batch(rows)
    width = starts.shape[1]
    max_position = width + slack
    pos = entry_positions(starts, ends, scheme, max_position, mask_BW=mask)
    assert pos.shape == starts.shape and pos.dtype == torch.float32
    assert torch.isfinite(pos).all()
    assert (pos >= 0).all() and (pos < max_position).all() and (pos <= width - 1).all()
    assert (pos[:, 1:] >= pos[:, :-1]).all()  # non-decreasing in entry order, padding included
    if scheme == "span_center_scaled":
        last = mask.sum(dim=1) - 1
        assert torch.equal(pos[torch.arange(len(rows)), last], last.float())


@settings(max_examples=30, deadline=None)
@given(width=st.integers(1, 300), half=st.sampled_from([1, 2, 4, 16, 32, 64]), B=st.integers(1, 3))
def test_ordinal_rotary_is_nanochat_table(width: int, half: int, B: int) -> None:
    head_dim = 2 * half
    starts, ends = tiling([1] * width)
    pos = entry_positions(starts.expand(B, -1), ends.expand(B, -1), "ordinal", max_position=width)
    cos, sin = rotary_cos_sin(pos, head_dim)
    ref_cos, ref_sin = nanochat_table(width, head_dim)
    assert cos.shape == sin.shape == (B, width, 1, half) and cos.dtype == torch.bfloat16
    assert torch.equal(cos, ref_cos.expand(B, -1, -1, -1)) and torch.equal(sin, ref_sin.expand(B, -1, -1, -1))


def test_every_row_its_own_layout_gathers_nanochat_rows() -> None:
    pos = torch.tensor([[0, 1, 2, 3], [5, 9, 100, 2047]], dtype=torch.float32)
    cos, sin = rotary_cos_sin(pos, 64)
    ref_cos, ref_sin = nanochat_table(2048, 64)
    idx = pos.long()
    assert torch.equal(cos, ref_cos[0, idx]) and torch.equal(sin, ref_sin[0, idx])


def test_rotary_rejects_odd_head_dims_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="even"):
        rotary_cos_sin(torch.zeros(1, 3), 7)
    with pytest.raises(ValueError, match=r"\[B, W\]"):
        rotary_cos_sin(torch.zeros(3), 8)
    with pytest.raises(ValueError, match="gaussian_sigma"):
        rotary_cos_sin(torch.zeros(1, 3), 8, gaussian_sigma=torch.zeros(1, 2))


# ---------------------------------------------------------------------------------------- Gaussian RoPE
def rotations(starts: torch.Tensor, ends: torch.Tensor, scheme: str = "ordinal", damped: bool = True) -> torch.Tensor:
    """(cos, sin) stacked, [W, 2, F] float32, of a layout with span-derived Gaussian damping (or none)."""
    pos = entry_positions(starts[None], ends[None], scheme, max_position=4096)
    sigma = span_sigma(ends - starts)[None] if damped else None
    cos, sin = rotary_cos_sin(pos, 16, dtype=torch.float32, gaussian_sigma=sigma)
    return torch.stack([cos[0, :, 0], sin[0, :, 0]], dim=1)


def damping(starts: torch.Tensor, ends: torch.Tensor, scheme: str = "ordinal") -> torch.Tensor:
    """|rotation| per (entry, frequency) of a layout: 1 = undamped."""
    return rotations(starts, ends, scheme).square().sum(dim=1).sqrt()


def test_span_sigma_is_zero_for_raw_tokens_and_proportional_to_the_span_for_gists() -> None:
    spans = torch.tensor([[1, 4, 32, 1024]])
    torch.testing.assert_close(span_sigma(spans, scale=0.5), torch.tensor([[0.0, 2.0, 16.0, 512.0]]))
    torch.testing.assert_close(span_sigma(spans)[0, 2], torch.tensor(32 / math.sqrt(12)))


def test_gaussian_damping_is_the_expected_rotation_under_position_jitter() -> None:
    pos, sigma = torch.tensor([[3.0, 7.5]]), torch.tensor([[0.0, 6.0]])
    cos, sin = rotary_cos_sin(pos, 8, dtype=torch.float32, gaussian_sigma=sigma)
    plain_cos, plain_sin = rotary_cos_sin(pos, 8, dtype=torch.float32)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    damp = torch.exp(-0.5 * (6.0 * inv_freq) ** 2)
    torch.testing.assert_close(cos[0, 1, 0], plain_cos[0, 1, 0] * damp)
    torch.testing.assert_close(sin[0, 1, 0], plain_sin[0, 1, 0] * damp)
    assert torch.equal(cos[0, 0], plain_cos[0, 0]) and torch.equal(sin[0, 0], plain_sin[0, 0])  # sigma 0
    # Monte Carlo: E[cos(f (p + eps))] with eps ~ N(0, sigma^2) at the highest-but-one frequency
    eps = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 6.0
    f = inv_freq[1].double()
    assert abs(torch.cos(f * (7.5 + eps)).mean().item() - cos[0, 1, 0, 1].item()) < 5e-3
    # high frequencies are damped more than low ones
    assert (damp[1:] >= damp[:-1]).all() and damp[0] < 1e-3 and damp[-1] > 0.99


def test_gaussian_width_comes_from_the_span_not_the_sequence_length() -> None:
    """The Gaussian width is the entry's span: the same gist gets the same damping in any history."""
    short_s, short_e = tiling([32, 1, 1, 1])  # W = 4, a history of 35 tokens
    long_s, long_e = tiling([1024] * 3 + [32] * 40 + [32] + [1] * 200)  # W = 244, 4,504 tokens
    gist_short, gist_long = 0, 3 + 40  # one 32-token gist in each layout
    assert (short_e - short_s)[gist_short] == (long_e - long_s)[gist_long] == 32
    short, long = damping(short_s, short_e), damping(long_s, long_e)
    torch.testing.assert_close(short[gist_short], long[gist_long], rtol=1e-6, atol=1e-7)
    assert (short[gist_short] < 1).any()  # it is damped ...
    assert (long[:3] < long[gist_long]).any() and (long[:3] <= long[gist_long]).all()  # ... less than bigger spans
    raw = slice(-200, None)  # raw tokens are never damped: bit-identical to plain RoPE
    assert torch.equal(rotations(long_s, long_e)[raw], rotations(long_s, long_e, damped=False)[raw])
    # the same node under the span-aware scheme: still only its span sets the damping
    scaled = damping(long_s, long_e, "span_center_scaled")
    torch.testing.assert_close(scaled[gist_long], short[gist_short], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------- cache
def rows_for(width: int, value: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((width, 1, 4), value), torch.full((width, 1, 4), -value)


def test_cache_is_a_bounded_lru() -> None:
    cache = PositionalCache(max_sessions=2)
    cache.put("a", *rows_for(3, 0.1))
    cache.put("b", *rows_for(3, 0.2))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", *rows_for(3, 0.3))
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    assert cache.get("b") is None
    assert (cache.hits, cache.misses) == (1, 1)
    cache.put("a", *rows_for(5, 0.4))  # replacing keeps one entry per session
    got = cache.get("a")
    assert len(cache) == 2 and got is not None and got[0].shape[0] == 5
    assert cache.pop("a") is not None and "a" not in cache
    cache.clear()
    assert len(cache) == 0


def test_cache_stacks_rows_of_different_layouts_with_identity_padding() -> None:
    cache = PositionalCache()
    pos = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 2.5, 3.0, 4.0, 4.0]])
    cos, sin = rotary_cos_sin(pos, 8)
    cache.put(7, cos[0], sin[0])
    cache.put("s2", cos[1, :3], sin[1, :3])
    stacked_cos, stacked_sin = cache.stack([7, "s2"], width=6)
    assert stacked_cos.shape == (2, 6, 1, 4) and stacked_cos.dtype == torch.bfloat16
    assert torch.equal(stacked_cos[0, :5], cos[0]) and torch.equal(stacked_sin[1, :3], sin[1, :3])
    assert (stacked_cos[1, 3:] == 1).all() and (stacked_sin[1, 3:] == 0).all()
    assert cache.stack([7])[0].shape == (1, 5, 1, 4)
    with pytest.raises(KeyError, match="'missing'"):
        cache.stack([7, "missing"])
    with pytest.raises(ValueError, match="shorter"):
        cache.stack([7], width=4)


def test_cache_rejects_bad_rows_and_bounds() -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        PositionalCache(0)
    with pytest.raises(ValueError, match=r"\[W, 1, F\]"):
        PositionalCache().put("a", torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))


def test_rope_base_is_the_models_own() -> None:
    """nanochat master's rotary base is 100,000 (the pin's 10,000): the plugin's tables read the model's."""
    from megacontext_plugin.context.positions import ROPE_BASE, rope_base

    class Master(torch.nn.Module):
        def _precompute_rotary_embeddings(self, seq_len, head_dim, base=100000, device=None):
            return None

    assert rope_base(Master()) == 100000.0
    assert rope_base(torch.nn.Linear(2, 2)) == ROPE_BASE == 10000.0
    table = rotary_cos_sin(torch.arange(4.0)[None], 8, base=rope_base(Master()), dtype=torch.float32)
    assert not torch.allclose(table[0], rotary_cos_sin(torch.arange(4.0)[None], 8, dtype=torch.float32)[0])
