"""MCController: variants, packing, losses and their knobs, learning, determinism, checkpoints.

Among them, the properties a controller can silently lose: targets are next tokens (never the
input), every gist is aligned, the aux nets are optimised, the lens loss is non-zero and
learns, the KL term is non-zero once scores move, advantage normalisation is used.
"""

from __future__ import annotations

import dataclasses
import io
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from megacontext_plugin.config import MCConfig
from megacontext_plugin.context import WorkingContext
from megacontext_plugin.focus.budget import minimal_length
from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig
from megacontext_plugin.training import losses
from megacontext_plugin.training.controller import MCController
from megacontext_plugin.tree import build_levels

T, K, D, VOCAB = 128, 8, 64, 64


def small_cfg(**overrides: object) -> MCConfig:
    """Random variants only unless a test asks for guided ones (tests/test_guided.py covers those)."""
    base = dict(mc=True, block_size=K, allocator_recent_tokens=16, mc_horizon=8, gistnet_heads=2, gistnet_layers=1,
                lensnet_dim=32, lensnet_heads=2, lensnet_layers=1, mc_num_random_variants=3, mc_seed=7,
                mc_onpolicy_variants=0, mc_teacher_variants=0)
    base.update(overrides)
    return MCConfig(**base)  # type: ignore[arg-type]


def make_controller(cfg: MCConfig, total_steps: int = 10, seq: int = T) -> MCController:
    return MCController(cfg, dim=D, head_dim=16, sequence_len=seq, total_steps=total_steps)


def tiny_model(seq: int = T) -> TinyGPT:
    """A base model whose attention already mixes context (nanochat zero-inits the output
    projections; here they are random so that variants differ in NLL from the first step)."""
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=VOCAB, sequence_len=seq, n_layer=1, n_head=4, n_embd=D))
    with torch.no_grad():
        for block in model.blocks:
            nn.init.normal_(block.proj.weight, std=0.3)
            nn.init.normal_(block.fc_out.weight, std=0.05)
    return model


def data(seed: int, batch: int = 2, seq: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, VOCAB, (batch, seq + 1), generator=g)
    return xy[:, :-1], xy[:, 1:]


def train_step(c: MCController, model: TinyGPT, step: int, seed: int):
    x, y = data(seed)
    b = c.process_batch(x, y, model.wte, step)
    nll = model(inputs_embeds=b.inputs_RWD, targets=b.targets_RW, cos_sin=b.cos_sin, loss_reduction="none")
    out = c.compute_losses(b, nll.view_as(b.targets_RW))
    out.total.backward()
    c.step_aux()
    model.zero_grad(set_to_none=True)
    return b, out


# ---- variants and packing --------------------------------------------------------------------

def test_targets_are_the_token_after_each_span_never_the_input() -> None:
    c = make_controller(small_cfg())
    x, y = data(1)
    b = c.process_batch(x, y, nn.Embedding(VOCAB, D), step=3)
    layouts = b.layouts
    B, V = layouts.batch, layouts.variants
    full = torch.cat([x, y[:, -1:]], dim=1)  # x[t+1] == y[t]
    for r in range(B * V):
        n = int(layouts.lengths_R[r])
        ends = torch.from_numpy(layouts.ends_RW[r, :n])
        assert torch.equal(b.targets_RW[r, :n], full[r // V, ends])  # the token right after the span
        assert bool((b.targets_RW[r, n:] == -1).all())
        raw = torch.from_numpy(layouts.levels_RW[r, :n] == 0)
        starts = torch.from_numpy(layouts.starts_RW[r, :n])[raw]
        # a raw entry's target is never the input token itself (unless the data repeats it)
        assert torch.equal(b.targets_RW[r, :n][raw], full[r // V, starts + 1])


def test_every_variant_is_legal_aligned_and_distinct() -> None:
    cfg = small_cfg(mc_num_random_variants=4, mc_max_counterfactuals=8)
    c = make_controller(cfg)
    b = c.process_batch(*data(2, batch=3), nn.Embedding(VOCAB, D), step=9)
    layouts = b.layouts
    V = layouts.variants
    assert V == 5
    for r in range(layouts.batch * V):
        n = int(layouts.lengths_R[r])
        lv, ix = layouts.levels_RW[r, :n], layouts.indices_RW[r, :n]
        assert n <= b.budget
        if r % V == 0:  # recency baseline: the last `budget` raw tokens
            assert n == b.budget and (lv == 0).all() and ix[0] == T - b.budget and ix[-1] == T - 1
            continue
        wc = WorkingContext(lv, ix, K, T)  # validates the tiling and alignment
        wc.validate(recent_tokens=cfg.allocator_recent_tokens, budget=b.budget)
        assert ((layouts.starts_RW[r, :n] % (K ** lv.astype(np.int64))) == 0).all()
        assert n > b.budget - (K - 1)  # filled up to the budget: little padding
    for row in range(layouts.batch):
        rows = range(row * V + 1, row * V + V)
        keys = {layouts.levels_RW[r].tobytes() + layouts.indices_RW[r].tobytes() for r in rows}
        assert len(keys) == V - 1
    assert layouts.duplicates == 0


def test_identical_variants_are_counted_when_the_budget_leaves_no_choice() -> None:
    from megacontext_plugin.training.layouts import sample_layouts

    tight = minimal_length(T, K, 16)
    layouts = sample_layouts(2, 4, T, K, tight, 16, np.random.default_rng(0))
    assert layouts.duplicates == 2 * 2  # every random variant after the first repeats it


def test_packed_inputs_are_one_gather_of_the_tree_levels() -> None:
    c = make_controller(small_cfg())
    wte = nn.Embedding(VOCAB, D)
    x, y = data(3)
    b = c.process_batch(x, y, wte, step=0)
    levels = build_levels(wte(x).to(c.aux_dtype), K, c.gistnet, max_level=c.num_levels - 1)
    levels[0] = wte(x)
    layouts = b.layouts
    for r in range(layouts.batch * layouts.variants):
        for w in range(int(layouts.lengths_R[r])):
            want = levels[layouts.levels_RW[r, w]][r // layouts.variants, layouts.indices_RW[r, w]]
            assert torch.allclose(b.inputs_RWD[r, w], want)
        assert bool((b.inputs_RWD[r, int(layouts.lengths_R[r]):] == 0).all())


def test_curriculum_anneals_from_80_percent_to_the_final_length_in_few_shapes() -> None:
    c = make_controller(small_cfg(mc_train_wc_length=0.5), total_steps=100)
    budgets = [c.budget_at(s) for s in range(100)]
    assert budgets[0] == int(0.8 * T) // max(K, T // 16) * max(K, T // 16)
    assert budgets[-1] == 64
    assert all(a >= b for a, b in itertools.pairwise(budgets))
    assert len(set(budgets)) <= 8  # shapes change a handful of times, never per step
    # a final length too small to leave variants any choice is raised to the smallest useful budget
    tight = make_controller(small_cfg(mc_train_wc_length=0.2, allocator_recent_tokens=16, mc_horizon=8))
    assert tight.recent == 16 + 8  # the prompt's tail, then the horizon
    assert tight.budget_at(10**6) == minimal_length(T, K, tight.recent) + 2 * (K - 1)


def test_gaussian_damping_follows_each_entrys_span() -> None:
    c = make_controller(small_cfg(mc_rope_gist_sigma=0.2887))
    b = c.process_batch(*data(4), nn.Embedding(VOCAB, D), step=5)
    assert b.cos_sin is not None
    cos, sin = b.cos_sin
    mag = (cos.float() ** 2 + sin.float() ** 2).sqrt()[..., 0, -1]  # lowest frequency: [R, W]
    spans = b.index.spans_RW
    raw = b.index.valid_RW & (spans == 1)
    assert torch.allclose(mag[raw], torch.ones_like(mag[raw]), atol=1e-3)
    l1, l2 = mag[spans == K], mag[spans == K * K]
    assert l1.numel() and l2.numel() and bool(l2.max() < l1.min())  # wider span, more damping
    assert make_controller(small_cfg()).process_batch(*data(4), nn.Embedding(VOCAB, D), 5).cos_sin is None


def test_positional_caches_keep_every_rows_own_layout_by_session() -> None:
    c = make_controller(small_cfg(mc_position_scheme="span_center_scaled"))
    b = c.process_batch(*data(6, batch=2), nn.Embedding(VOCAB, D), step=4, session_ids=["alice", "bob"])
    assert b.cos_sin is not None
    V = b.layouts.variants
    cos, sin = c.positional_caches.stack([("bob", 1), ("alice", 2)])
    assert torch.equal(cos, b.cos_sin[0][[V + 1, 2]]) and torch.equal(sin, b.cos_sin[1][[V + 1, 2]])
    assert not torch.equal(b.cos_sin[0][1], b.cos_sin[0][2])  # different layouts, different tables
    with pytest.raises(ValueError, match="session_ids"):
        c.process_batch(*data(6, batch=2), nn.Embedding(VOCAB, D), step=4, session_ids=["solo"])


def test_lensnet_scores_only_random_variants_and_skips_the_anchor_when_kl_is_off() -> None:
    c = make_controller(small_cfg(mc_lens_kl_weight=0.0))
    b = c.process_batch(*data(7), nn.Embedding(VOCAB, D), step=2)
    V = b.layouts.variants
    assert bool((b.scores_RW.view(2, V, -1)[:, 0] == 0).all())
    assert bool(b.scores_RW.view(2, V, -1)[:, 1:].abs().sum() > 0)
    assert bool((b.prev_scores_RW == 0).all())
    on = make_controller(small_cfg()).process_batch(*data(7), nn.Embedding(VOCAB, D), step=2)
    assert bool(on.prev_scores_RW.abs().sum() > 0)


def test_bf16_aux_nets_train_beside_an_fp32_base_model() -> None:
    c = make_controller(small_cfg(mc_aux_dtype="bf16"))
    assert next(c.gistnet.parameters()).dtype == torch.bfloat16
    model = tiny_model()
    b, out = train_step(c, model, 1, seed=9)
    assert b.inputs_RWD.dtype == torch.float32  # the base model's dtype
    assert torch.isfinite(out.total)
    assert make_controller(small_cfg()).aux_dtype == torch.float32  # auto on CPU


# ---- losses and their knobs --------------------------------------------------------------------

def test_aux_nets_get_gradients_and_change_after_a_step() -> None:
    c = make_controller(small_cfg(mc_aux_lr=1e-2))
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in c.named_parameters() if not n.startswith("lens_prev")}
    x, y = data(5)
    b = c.process_batch(x, y, model.wte, 2)
    nll = model(inputs_embeds=b.inputs_RWD, targets=b.targets_RW, loss_reduction="none").view_as(b.targets_RW)
    out = c.compute_losses(b, nll)
    out.total.backward()
    for name, p in list(c.gistnet.named_parameters()) + list(c.lensnet.named_parameters()):
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    assert model.wte.weight.grad is not None  # the base model learns to read gists through its embeddings
    c.step_aux()
    changed = [n for n, p in c.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(n.startswith("gistnet") for n in changed) and any(n.startswith("lensnet") for n in changed)


def _plain(metrics: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """Metric values as floats, NaN (a level absent from the batch) as None so runs compare equal."""
    return {k: None if torch.isnan(v) else float(v) for k, v in metrics.items()}


def _losses_for(cfg: MCConfig, steps: int = 3) -> list[dict[str, float]]:
    c = make_controller(cfg)
    model = tiny_model()
    history = []
    for step in range(steps):
        _, out = train_step(c, model, step, seed=100 + step)
        history.append(_plain(out.metrics) | {"total": float(out.total.detach())})
    c.close()
    return history


def test_lens_loss_is_non_zero_and_kl_moves_once_scores_move() -> None:
    hist = _losses_for(small_cfg(mc_aux_lr=5e-2, mc_lens_loss_weight=1.0))
    assert all(h["lens_bt_loss"] > 0 for h in hist)
    assert hist[0]["lens_kl"] == pytest.approx(0.0, abs=1e-9)  # the anchor is the same net at step 0
    assert hist[1]["lens_kl"] > 1e-6 and hist[2]["lens_kl"] > 1e-6


@pytest.mark.parametrize(
    ("knob", "value", "metric"),
    [
        ("mc_lens_temperature", 0.1, "lens_bt_loss"),
        ("mc_lens_adv_norm_beta", 0.0, "lens_bt_loss"),
        ("mc_lens_hard_negative_ratio", 0.3, "pairs_kept"),
        ("mc_lens_kl_weight", 5.0, "lens_loss"),
        ("mc_lens_budget_smooth_weight", 5.0, "lens_loss"),
        ("mc_lens_budget_smooth_beta", 0.0, "lens_budget_penalty"),
        ("mc_lens_loss_weight", 3.0, "total"),
        ("mc_gist_loss_weight", 0.0, "total"),
    ],
)
def test_every_loss_knob_changes_what_it_documents(knob: str, value: float, metric: str) -> None:
    base = small_cfg(mc_aux_lr=5e-2, mc_num_random_variants=4)
    default = _losses_for(base)
    changed = _losses_for(dataclasses.replace(base, **{knob: value}))
    # step 0 for the per-step knobs; the KL, budget and EMA terms are zero until a step has passed
    step = 2 if knob in ("mc_lens_adv_norm_beta", "mc_lens_budget_smooth_beta", "mc_lens_kl_weight",
                         "mc_lens_budget_smooth_weight") else 0
    assert changed[step][metric] != pytest.approx(default[step][metric], rel=1e-6, abs=1e-9), (knob, metric)


def test_seeded_runs_are_bit_identical_on_cpu() -> None:
    a = _losses_for(small_cfg(), steps=3)
    b = _losses_for(small_cfg(), steps=3)
    assert a == b
    c = _losses_for(small_cfg(mc_seed=8), steps=3)
    assert c != a


def test_controller_state_resumes_bit_exactly() -> None:
    cfg = small_cfg(mc_aux_lr=1e-2)
    straight = make_controller(cfg)
    model_a = tiny_model()
    for step in range(2):
        train_step(straight, model_a, step, seed=step)
    checkpoint = io.BytesIO()
    torch.save({"mc": straight.controller_state(), "model": model_a.state_dict()}, checkpoint)
    _, out_a = train_step(straight, model_a, 2, seed=2)

    checkpoint.seek(0)
    saved = torch.load(checkpoint)  # weights_only: the controller state is plain tensors and numbers
    resumed = make_controller(cfg)
    resumed.load_controller_state(saved["mc"])
    model_b = tiny_model()
    model_b.load_state_dict(saved["model"])
    _, out_b = train_step(resumed, model_b, 2, seed=2)
    assert _plain(out_a.metrics) == _plain(out_b.metrics)


def test_saving_controller_state_does_not_change_the_run() -> None:
    cfg = small_cfg(mc_aux_lr=1e-2)
    plain, saved = make_controller(cfg), make_controller(cfg)
    model_a, model_b = tiny_model(), tiny_model()
    for step in range(4):
        if step == 2:
            saved.controller_state()  # a checkpoint in the middle of the run
        _, out_a = train_step(plain, model_a, step, seed=step)
        _, out_b = train_step(saved, model_b, step, seed=step)
        assert _plain(out_a.metrics) == _plain(out_b.metrics), step


def test_a_batch_longer_than_the_window_is_compressed_into_it() -> None:
    c = make_controller(small_cfg())
    for step in (0, 10**6):  # the widest and the final budget
        batch = c.process_batch(*data(2, seq=4 * T), nn.Embedding(VOCAB, D), step)
        assert batch is not None and batch.inputs_RWD.shape[1] <= T  # the model never sees more than its window
        assert batch.budget <= T
    assert c.process_batch(*data(1, seq=T // 2), nn.Embedding(VOCAB, D), 0) is not None  # shorter is fine


# ---- learning ---------------------------------------------------------------------------------

LT, LK, LV = 256, 8, 64


def _key_batch(g: torch.Generator, wte: nn.Embedding, batch: int = 8):
    """Random tokens with one *key* block planted early; the 8 tokens before the horizon (the
    prompt's end: the query LensNet sees) and the last 8 (the horizon) repeat the key."""
    x = torch.randint(1, LV, (batch, LT + 1), generator=g)
    keys = torch.randint(1, LV, (batch,), generator=g)
    blocks = torch.randint(0, (LT - 64) // LK, (batch,), generator=g)
    for b in range(batch):
        x[b, blocks[b] * LK:(blocks[b] + 1) * LK] = keys[b]
        x[b, LT - 16:] = keys[b]
    return x[:, :-1], x[:, 1:], keys, blocks


def _oracle_nll(inputs_RWD, targets_RW, ends_RW, key_vec_RD, horizon):
    """A base model whose tail NLL is low exactly when the key is visible in detail: 1 + 3 (1 - c)^2
    with c the best cosine between the key and any entry before the query."""
    valid = targets_RW >= 0
    cos = F.cosine_similarity(inputs_RWD.float(), key_vec_RD[:, None, :], dim=-1)
    best = cos.masked_fill(~(valid & (ends_RW <= LT - 16)), -1).amax(1)
    col = torch.arange(inputs_RWD.shape[1])[None]
    tail = (col >= valid.sum(1, keepdim=True) - horizon) & valid
    return torch.where(tail, 1 + 3 * (1 - best[:, None]).clamp_min(0) ** 2, torch.full_like(cos, 0.5)) * valid


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_lensnet_learns_which_block_matters() -> None:
    """One block is decisive for the tail; after a short seeded training LensNet's pair margins
    rank variants by their true ΔNLL, and the node holding the key scores highest."""
    torch.manual_seed(0)
    wte = nn.Embedding(LV, D).requires_grad_(False)
    cfg = MCConfig(mc=True, block_size=LK, allocator_recent_tokens=16, mc_horizon=8, gistnet_heads=2,
                   lensnet_dim=64, mc_aux_lr=1e-2, mc_lens_loss_weight=1.0, mc_seed=3)
    c = MCController(cfg, dim=D, head_dim=16, sequence_len=LT, total_steps=2)
    g = torch.Generator().manual_seed(1)

    def run(step: int):
        x, y, keys, blocks = _key_batch(g, wte)
        b = c.process_batch(x, y, wte, step)
        key_vec = wte.weight[keys].repeat_interleave(b.layouts.variants, 0)
        nll = _oracle_nll(b.inputs_RWD, b.targets_RW, torch.from_numpy(b.layouts.ends_RW), key_vec, cfg.mc_horizon)
        return c.compute_losses(b, nll), x, blocks

    first_bt = []
    for step in range(1, 200 + 1):
        out, _, _ = run(step)
        first_bt.append(float(out.metrics["lens_bt_loss"]))
        out.total.backward()
        c.step_aux()

    margins, truths, hits = [], [], []
    wc = WorkingContext.coarsest(LT - cfg.mc_horizon, LK, 16)  # the prompt's layout inference starts from
    lv_W = torch.from_numpy(wc.levels.astype(np.int64))
    with torch.no_grad():
        for _ in range(8):
            out, x, blocks = run(1)
            margins.append(out.pairs["margin"].reshape(-1).numpy())
            truths.append(-out.pairs["adv"].reshape(-1).numpy())  # dnll_i - dnll_j
            # on the coarsest layout, does the node holding the key get the top score among gists?
            levels = build_levels(wte(x).float(), LK, c.gistnet, max_level=c.num_levels - 1)
            ent_BWD = torch.stack([levels[int(lv)][:, int(ix)] for lv, ix in zip(wc.levels, wc.indices, strict=True)],
                                  dim=1)
            B = x.shape[0]
            spans = torch.from_numpy(wc.ends - wc.starts).expand(B, -1)
            query = wte(x[:, -2 * cfg.mc_horizon:-cfg.mc_horizon]).float()  # the prompt's last H tokens
            u = c.lensnet(ent_BWD, lv_W.expand(B, -1), spans, query)
            best = u.masked_fill(lv_W == 0, -2).argmax(1).numpy()
            hits += [bool(wc.starts[best[r]] <= blocks[r] * LK < wc.ends[best[r]]) for r in range(B)]
    c.close()
    margin_all, truth_all = np.concatenate(margins), np.concatenate(truths)
    decided = np.abs(truth_all) > 1e-6  # pairs whose variants differ in tail NLL (others are ties)
    rho = _spearman(margin_all[decided], truth_all[decided])
    # what it learned, not how well (that is the benchmarks' job): margins order variants the way the true
    # ΔNLL does, and the key's node is the top gist more often than a uniform pick among the gists would be
    assert rho < 0, f"rank correlation of LensNet margins with the true ΔNLL is {rho:.2f}"
    chance = 1 / int((wc.levels > 0).sum())
    assert np.mean(hits) > chance, f"the key's node scored highest in {np.mean(hits):.0%} of rows (chance {chance:.0%})"
    assert np.mean(first_bt[-50:]) < np.mean(first_bt[:50])  # the preference loss goes down


def test_listwise_kl_fixes_ranks_and_gaps_not_the_level() -> None:
    target = torch.tensor([[1.0, 0.2, 0.0, 0.5], [0.3, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])  # row 1: one entry, left out
    shifted = target - 0.7
    assert losses.listwise_kl(shifted, target, mask, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    swapped = torch.tensor([[0.2, 1.0, 0.0, 0.5], [0.3, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = losses.listwise_kl(swapped, target, mask, 0.1)
    assert loss.item() > 1.0
    loss.backward()
    assert swapped.grad is not None
    assert swapped.grad[0, 0] < 0 < swapped.grad[0, 1]  # raise the salient entry, lower the other
    assert swapped.grad[0, 3] == 0 and (swapped.grad[1] == 0).all()  # masked entries and short rows: nothing
    none = torch.zeros(2, 4, requires_grad=True)
    assert losses.listwise_kl(none, target, torch.zeros(2, 4, dtype=torch.bool), 0.1).item() == 0.0


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_lensnet_distils_the_teacher_saliency_only_with_a_teacher_pass(weight: float) -> None:
    model = tiny_model()
    ctrl = make_controller(small_cfg(mc_lens_teacher_weight=weight))
    x, y = data(3)

    def nll_fn(emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=emb, targets=targets, loss_reduction="none").float().view_as(targets)

    batch = ctrl.process_batch(x, y, model.wte, step=9, nll_fn=nll_fn)
    assert batch is not None
    nll = model(inputs_embeds=batch.inputs_RWD, targets=batch.targets_RW, cos_sin=batch.cos_sin,
                loss_reduction="none").float().view_as(batch.targets_RW)
    out = ctrl.compute_losses(batch, nll)
    if weight == 0:
        assert batch.saliency_RW is None and out.terms["lens_teacher"].item() == 0.0
    else:
        assert batch.saliency_RW is not None and out.terms["lens_teacher"].item() > 0
        gists = batch.index.levels_RW > 0
        assert (batch.saliency_RW[~gists] == 0).all() and (batch.saliency_RW <= 1).all()
        out.total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctrl.lensnet.parameters())
    without = ctrl.process_batch(x, y, model.wte, step=9)  # no nll_fn: no teacher pass, nothing to distil
    assert without is not None and without.saliency_RW is None
    ctrl.close()


@pytest.mark.parametrize("plain_every", [2, 0])  # base_train's plain steps between MC steps; a later stage's none
def test_the_teacher_pass_runs_every_nth_optimizer_step_and_its_variants_are_random_between(plain_every: int) -> None:
    model = tiny_model()
    ctrl = make_controller(small_cfg(mc_teacher_variants=2, mc_num_random_variants=1, mc_teacher_every=3),
                           total_steps=20)
    x, y = data(4)
    passes: list[int] = []

    def nll_fn(emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        passes.append(1)
        return model(inputs_embeds=emb, targets=targets, loss_reduction="none").float().view_as(targets)

    due_steps = []
    for step in range(10):
        if plain_every and step % plain_every == plain_every - 1:  # a plain step: no batch, but an optimizer step
            ctrl.step_aux()
            continue
        pending = ctrl.layouts._pending
        batch = ctrl.process_batch(x, y, model.wte, step=20 if not plain_every else step, nll_fn=nll_fn)
        assert batch is not None
        kinds = batch.layouts.rows_per_kind()
        due = step % 3 == 0  # the optimizer steps the plugin has seen, whatever step the curriculum reads
        due_steps += [step] if due else []
        assert batch.teacher_pass == due and (batch.saliency_RW is not None) == due
        # the same rows every step: the teacher's two columns are random ones between its passes
        assert batch.layouts.variants == 4
        assert (kinds["teacher"], kinds["random"]) == ((4, 2) if due else (0, 6))
        if pending is not None and not plain_every:  # the background sample for this step had this step's shape
            assert pending[0][1] == 1 + kinds["random"] // 2
        ctrl.step_aux()
    assert len(passes) == len(due_steps) == (2 if plain_every else 4)  # steps 0 and 6; or 0, 3, 6 and 9
    ctrl.close()
