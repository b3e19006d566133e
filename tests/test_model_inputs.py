"""One input path: training, evaluation and inference build identical inputs for one working context."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_support import T, build, prompt

from megacontext_plugin.context import EntryRows, LevelTable, WorkingContext, model_inputs
from megacontext_plugin.evaluation.arms import ArmRunner
from megacontext_plugin.inference.session import MCSession, SessionSettings
from megacontext_plugin.training.layouts import sample_layouts, with_guided
from megacontext_plugin.tree.building import build_levels


@pytest.mark.parametrize("extra", [[], ["--mc_position_scheme", "span_center_scaled", "--mc_rope_gist_sigma", "0.3"]])
@torch.no_grad()
def test_training_evaluation_and_inference_read_the_same_inputs(extra: list[str]) -> None:
    model, ctrl, cfg = build(extra)
    n, c = 100, 5
    ids = prompt(n + c)
    prefix, cont = torch.tensor(ids[:n]), torch.tensor(ids[n:])
    K = cfg.block_size
    # the prefix as evaluation's MC arm lays it out (a refocused WC: gists of two levels and raw islands)
    wc = WorkingContext.coarsest(n, K, 16).expand([0]).expand([1])
    assert {0, 1} <= set(wc.levels.tolist()) and len(wc) + c - 1 <= T
    full_wc = wc.append(c - 1)
    scheme, sigma = ctrl.cfg.mc_position_scheme, ctrl.cfg.mc_rope_gist_sigma
    common = {"scheme": scheme, "sigma_scale": sigma, "head_dim": 16, "sequence_len": T,
              "rotary_dtype": torch.float32}

    # training: the controller's packing of one variant row (tree levels of the whole sequence)
    x = torch.tensor(ids[:-1])[None]
    levels = build_levels(model.wte(x).to(ctrl.aux_dtype), K, ctrl.gistnet, max_level=2)
    levels[0] = model.wte(x)
    baseline = sample_layouts(1, 1, n + c - 1, K, len(full_wc), 16, np.random.default_rng(0))
    layouts = with_guided(baseline, [[wc]], c - 1)  # row 0 the recency baseline, row 1 the guided WC
    train_rows = EntryRows(np.zeros(2, dtype=np.int64), layouts.levels_RW, layouts.indices_RW, layouts.starts_RW,
                           layouts.ends_RW)
    train = model_inputs(LevelTable(levels, x), train_rows, **common)

    # evaluation: the arm runner's source and rows for the same WC
    runner = ArmRunner(model, ctrl, budget=T)
    eval_levels, _ = runner.tree(prefix)
    source = runner.source(eval_levels, prefix, cont)
    evaluation = model_inputs(source, EntryRows.of([full_wc]), **common)

    # inference: a session that ingested the same tokens, reading the same WC from its tree
    settings = SessionSettings.from_config(cfg, T, max_level=ctrl.lensnet.max_level)
    session = MCSession(model, ctrl.gistnet, ctrl.lensnet, settings)
    session.ingest(ids[:-1])
    inference = session.entries.inputs(full_wc, 0)
    session.close()

    W = len(full_wc)
    for other in (evaluation, inference):
        torch.testing.assert_close(other.inputs_RWD[0], train.inputs_RWD[1, :W], rtol=1e-5, atol=1e-5)
        assert torch.equal(other.value_ids_RW[0], train.value_ids_RW[1, :W])
        if train.cos_sin is None:
            assert other.cos_sin is None
        else:
            torch.testing.assert_close(other.cos_sin[0][0], train.cos_sin[0][1, :W])
            torch.testing.assert_close(other.cos_sin[1][0], train.cos_sin[1][1, :W])
    assert (train.value_ids_RW[1, :W] >= 0).tolist() == (full_wc.levels == 0).tolist()
    ctrl.close()


def test_value_ids_are_int64_whatever_the_token_dtype() -> None:
    """nanochat's mid/SFT loaders give int32 token ids; value ids are always int64."""
    ids = torch.arange(12, dtype=torch.int32)[None]
    levels = [torch.randn(1, 12, 4), torch.randn(1, 3, 4)]
    rows = EntryRows.of([WorkingContext.coarsest(12, 4, 4)])
    out = model_inputs(LevelTable(levels, ids), rows, scheme="ordinal", sigma_scale=0.0, head_dim=4, sequence_len=12,
                       rotary_dtype=torch.float32, targets_BT=ids)
    assert out.value_ids_RW.dtype == torch.int64
    assert out.value_ids_RW[0].tolist() == [-1, -1, 8, 9, 10, 11]
