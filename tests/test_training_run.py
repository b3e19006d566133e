"""TrainingRun's plain phase (``--mc_plain_steps``): base_train's first steps train plainly, the
curriculum counts from the end of them, and a plain phase that leaves no MC step is a config error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megacontext_plugin.config import ConfigError, MCConfig
from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig
from megacontext_plugin.training.run import TrainingRun

CFG = MCConfig(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=8, gistnet_layers=1, lensnet_layers=1,
               lensnet_dim=32, mc_teacher_variants=0, mc_plain_steps=3)


def _model() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(TinyGPTConfig(vocab_size=64, sequence_len=128, n_layer=1, n_head=2, n_embd=32))


def test_plain_steps_train_plainly_then_the_curriculum_starts_at_its_widest_budget() -> None:
    model = _model()
    run = TrainingRun(CFG, model, num_iterations=10, stage="base")
    try:
        x = torch.randint(0, 64, (2, 128))
        assert run.controller.total_steps == 7  # the MC steps
        for step in range(3):
            assert run.plain and run.budget_step == 0
            assert run.forward_batch(model, x, x) is None, step
            run.after_optimizer_step(step)
        assert not run.plain and run.budget_step == 0
        batch = run.forward_batch(model, x, x)
        assert batch is not None and batch.budget == run.controller.budget_at(0)
        run.after_optimizer_step(3)
        assert run.budget_step == 1
    finally:
        run.close()


def test_later_stages_ignore_the_plain_steps() -> None:
    run = TrainingRun(CFG, _model(), num_iterations=2, stage="mid")
    try:
        assert not run.plain and run.budget_step == run.controller.total_steps == 2
    finally:
        run.close()


def test_a_plain_phase_that_leaves_no_mc_step_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="--mc_plain_steps 3 leaves no MegaContext step of base_train's 3"):
        TrainingRun(CFG, _model(), num_iterations=3, stage="base")


def test_plain_every_trains_every_nth_step_after_the_plain_phase_plainly_and_the_curriculum_counts_them() -> None:
    model = _model()
    cfg = dataclasses.replace(CFG, mc_plain_every=3)
    run = TrainingRun(cfg, model, num_iterations=12, stage="base")
    try:
        x = torch.randint(0, 64, (2, 128))
        plain = []
        for step in range(12):
            batch = run.forward_batch(model, x, x)
            plain.append(batch is None)
            assert run.plain == (batch is None)
            run.after_optimizer_step(step)
        # the 3 plain steps, then every third of the MC steps (the last of each 3)
        assert plain == [True] * 3 + [False, False, True] * 3
        assert run.budget_step == 9
    finally:
        run.close()


@pytest.mark.parametrize("stage", ["mid", "sft"])
def test_plain_every_trains_every_nth_step_of_a_later_stage_plainly_from_its_first_step(stage: str) -> None:
    model = _model()
    run = TrainingRun(dataclasses.replace(CFG, mc_plain_every=2), model, num_iterations=6, stage=stage)
    try:
        x = torch.randint(0, 64, (2, 128))
        plain = []
        for step in range(6):
            plain.append(run.forward_batch(model, x, x) is None)
            run.after_optimizer_step(step)
        assert plain == [False, True] * 3  # base_train's --mc_plain_steps mean nothing here
        assert run.budget_step == run.controller.total_steps  # the curriculum sits at its final budget
    finally:
        run.close()


def test_without_plain_every_a_later_stage_trains_every_step_through_megacontext() -> None:
    model = _model()
    run = TrainingRun(CFG, model, num_iterations=4, stage="sft")  # CFG's 3 plain steps are base_train's only
    try:
        x = torch.randint(0, 64, (2, 128))
        for step in range(4):
            assert not run.plain
            assert run.forward_batch(model, x, x) is not None
            run.after_optimizer_step(step)
    finally:
        run.close()


def test_plain_every_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="--mc_plain_every"):
        dataclasses.replace(CFG, mc_plain_every=1)
