"""Auto-batch keeps vanilla's processed positions; FLOPs count the work actually executed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megacontext_plugin.config import MCConfig
from megacontext_plugin.focus.budget import curriculum_budget, smallest_useful_budget
from megacontext_plugin.nets import build_gistnet, build_lensnet
from megacontext_plugin.training.curriculum import auto_batch, mid_loader_iterations
from megacontext_plugin.training.flops import gists_per_sequence, mc_step_flops, vanilla_step_flops
from megacontext_plugin.tree import build_levels


def test_auto_batch_scales_batch_by_peak_and_iterations_by_mean_multiplier() -> None:
    cfg = MCConfig(mc=True, mc_num_random_variants=3)  # V = 1 + 1 on-policy + 2 teacher + 3 random
    plan = auto_batch(cfg, device_batch_size=32, num_iterations=1000, sequence_len=2048)
    assert plan.applied and cfg.num_variants == 7
    assert plan.peak_multiplier == pytest.approx(7 * 1536 / 2048)  # 80% of 2048, rounded down to 128s
    assert plan.device_batch_size == int(32 / plan.peak_multiplier)
    assert plan.num_iterations == round(1000 / plan.mean_multiplier)
    # same base-model positions as vanilla (up to rounding of the iteration count)
    assert plan.num_iterations * plan.mean_multiplier == pytest.approx(1000, rel=1e-3)
    assert 1 < plan.mean_multiplier < plan.peak_multiplier
    assert "device batch" in plan.describe()


def test_auto_batch_off_changes_nothing_but_reports() -> None:
    plan = auto_batch(MCConfig(mc=True, mc_auto_batch=0), 32, 1000, 2048)
    assert (plan.device_batch_size, plan.num_iterations, plan.applied) == (32, 1000, False)
    assert plan.peak_multiplier > 1


def test_curriculum_respects_the_inference_budget_cap() -> None:
    cfg = MCConfig(mc=True, mc_wc_budget=512)
    floor = smallest_useful_budget(2048, cfg.block_size, 64)
    assert curriculum_budget(cfg, 0, 100, 2048, floor) == 512
    assert curriculum_budget(cfg, 99, 100, 2048, floor) == 384


def test_step_flops_by_hand_and_measured_for_the_aux_nets() -> None:
    cfg = MCConfig(mc=True, block_size=8, gistnet_heads=2, gistnet_layers=1, lensnet_dim=32, lensnet_heads=2,
                   lensnet_layers=1)
    D, T, B, V, W, H = 64, 128, 2, 4, 48, 8
    gist, lens = build_gistnet(cfg, D, width=32), build_lensnet(cfg, D)
    assert gists_per_sequence(T, 8) == 16 + 2

    def fpt(context: int) -> int:
        return 6 * 1000 + 12 * 2 * D * context

    flops = mc_step_flops(fpt, gist, lens, batch=B, variants=V, width=W, sequence_len=T, block_size=8, horizon=H)
    assert flops.base == B * V * W * (6000 + 24 * D * W)
    assert flops.gistnet == 3 * gist.flops_per_gist() * B * 18
    assert flops.lensnet == 4 * lens.flops(W, H, B * (V - 1))  # random variants only, + the KL anchor
    no_kl = mc_step_flops(fpt, gist, lens, batch=B, variants=V, width=W, sequence_len=T, block_size=8, horizon=H,
                          kl_anchor=False)
    assert no_kl.lensnet == 3 * lens.flops(W, H, B * (V - 1))
    assert flops.total == flops.base + flops.gistnet + flops.lensnet
    assert vanilla_step_flops(fpt, batch=B, sequence_len=T) == B * T * fpt(T)

    # the GistNet term is what build_levels really runs (forward; math attention so it is counted)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        build_levels(torch.randn(B, T, D), 8, gist)
    assert fc.get_total_flops() == gist.flops_per_gist() * B * 18


def test_step_flops_count_the_teacher_pass_and_the_on_policy_scoring() -> None:
    cfg = MCConfig(mc=True, block_size=8, gistnet_heads=2, gistnet_layers=1, lensnet_dim=32, lensnet_heads=2,
                   lensnet_layers=1)
    D, T, B, V, W, H = 64, 128, 2, 4, 48, 8
    gist, lens = build_gistnet(cfg, D, width=32), build_lensnet(cfg, D)

    def fpt(context: int) -> int:
        return 6 * 1000 + 12 * 2 * D * context

    plain = mc_step_flops(fpt, gist, lens, batch=B, variants=V, width=W, sequence_len=T, block_size=8, horizon=H)
    both = mc_step_flops(fpt, gist, lens, batch=B, variants=V, width=W, sequence_len=T, block_size=8, horizon=H,
                         teacher_pass=True, lens_calls=3)
    assert plain.teacher == 0
    assert both.teacher == 2 * B * T * fpt(T) // 3  # forward + backward to the inputs, no weight gradients
    head = 6 * 500  # half of the parameters in the output head, which runs on the horizon only
    sliced = mc_step_flops(fpt, gist, lens, batch=B, variants=V, width=W, sequence_len=T, block_size=8, horizon=H,
                           teacher_pass=True, head_flops_per_token=head)
    assert sliced.teacher == 2 * B * (T * (fpt(T) - head) + H * head) // 3
    assert both.lensnet - plain.lensnet == 3 * lens.flops(W - H, H, B)
    assert both.total == both.base + both.gistnet + both.lensnet + both.teacher


def test_the_controller_counts_the_teacher_pass_only_where_it_runs() -> None:
    from megacontext_plugin.training.controller import MCController

    def fpt(context: int) -> int:
        return 6 * 1000 + 12 * 2 * 64 * context

    knobs = dict(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=8, gistnet_heads=2, lensnet_dim=32,
                 lensnet_heads=2)
    with_teacher = MCController(MCConfig(**knobs), dim=64, head_dim=32, sequence_len=128, total_steps=10)
    without = MCController(MCConfig(**knobs, mc_teacher_variants=0, mc_lens_teacher_weight=0.0), dim=64,
                           head_dim=32, sequence_len=128, total_steps=10)
    try:
        assert with_teacher.step_flops(fpt, 2, 3, teacher_pass=True).teacher == 2 * 2 * 128 * fpt(128) // 3
        assert with_teacher.step_flops(fpt, 2, 3).teacher == 0  # no nll_fn: no pass
        assert without.step_flops(fpt, 2, 3, teacher_pass=True).teacher == 0  # nothing needs it
    finally:
        with_teacher.close()
        without.close()


def test_the_budget_reaches_its_final_value_after_the_anneal_fraction_and_stays() -> None:
    cfg = MCConfig(mc=True, block_size=8, mc_train_wc_length=0.0625, mc_anneal_fraction=0.1)
    floor = smallest_useful_budget(1024, 8, 16)
    budgets = [curriculum_budget(cfg, s, 500, 1024, floor) for s in range(500)]
    assert budgets[0] == 768  # 80% of 1024 in multiples of 64
    assert budgets[49] == 64 and set(budgets[49:]) == {64}
    assert budgets == sorted(budgets, reverse=True) and len(set(budgets[:49])) > 3
    whole = MCConfig(mc=True, block_size=8, mc_train_wc_length=0.0625)  # the default anneals over every step
    assert curriculum_budget(whole, 49, 500, 1024, floor) > 64 and curriculum_budget(whole, 499, 500, 1024, floor) == 64


def test_auto_batch_leaves_the_plain_steps_as_they_are() -> None:
    cfg = MCConfig(mc=True, mc_plain_steps=400)
    plan = auto_batch(cfg, 32, 1000, 2048)
    assert plan.num_iterations == 400 + round(600 / plan.mean_multiplier)
    assert auto_batch(MCConfig(mc=True), 32, 1000, 2048).num_iterations == round(1000 / plan.mean_multiplier)


def _upstream_mid_loop(loader_iterations: int, micro_batches_per_step: int) -> tuple[int, list[float]]:
    """The pin's mid_train loop as it counts: one micro-batch fetched before the loop, ``k`` per step, the
    stage ending at the top of the step after the loader's count reached ``--num-iterations``; returns the
    step it saves at and the schedule's progress after each step."""
    it, step, progress, seen = 1, 0, 0.0, []
    last = loader_iterations <= it
    while not last:
        for _ in range(micro_batches_per_step):
            it += 1
            last = last or loader_iterations <= it
            progress = max(progress, it / loader_iterations)
        seen.append(progress)
        step += 1
    return step, seen


@pytest.mark.parametrize("requested", [1, 2, 20, 60])
@pytest.mark.parametrize("batches", [(8, 1), (8, 2), (4, 4)])
def test_mid_train_keeps_its_steps_and_schedule_when_auto_batch_lowers_the_batch(requested: int,
                                                                                 batches: tuple[int, int]) -> None:
    device_batch, adjusted = batches
    counted, message = mid_loader_iterations(requested, device_batch, adjusted)
    assert (message is None) == (device_batch == adjusted)
    saved_at, progress = _upstream_mid_loop(counted, device_batch // adjusted)
    upstream_saved_at, upstream_progress = _upstream_mid_loop(requested, 1)
    assert saved_at == upstream_saved_at == max(0, requested - 1)
    assert all(0 <= p <= 1 for p in progress) and progress[-1:] == upstream_progress[-1:]
    assert mid_loader_iterations(-1, 8, 1) == (-1, None)  # one epoch: progress by consumption, nothing to do
