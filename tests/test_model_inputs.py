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
    runner = ArmRunner(model, ctrl.nets, budget=T)
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


def _old_batch_scores(lensnet, table: LevelTable, wcs: list[WorkingContext], query_RHD: torch.Tensor) -> list:
    """The training controller's on-policy scorer before ``lens_utilities`` (its site code, kept as the reference)."""
    rows = EntryRows.of(wcs)
    R, W = rows.shape
    entries = table.gather(np.repeat(rows.seq_R, W), rows.levels_RW.reshape(-1),
                           rows.indices_RW.reshape(-1)).view(R, W, -1)
    t = torch.from_numpy
    spans = np.where(rows.valid_RW, rows.ends_RW - rows.starts_RW, 0)
    levels_RW = np.where(rows.valid_RW, rows.levels_RW, 0)
    u_RW = lensnet(entries, t(levels_RW), t(spans), query_RHD, t(rows.valid_RW)).float().cpu().numpy()
    return [u_RW[r, :len(wc)] for r, wc in enumerate(wcs)]


def _old_one_scores(lensnet, x_WD: torch.Tensor, wc: WorkingContext, query_1HD: torch.Tensor) -> np.ndarray:
    """The probe's, the evaluation arm's and inference's scorer of one working context before ``lens_utilities``."""
    levels = torch.from_numpy(wc.levels.astype(np.int64))[None]
    spans = torch.from_numpy((wc.ends - wc.starts).astype(np.int64))[None]
    return lensnet(x_WD[None], levels, spans, query_1HD)[0].float().cpu().numpy()


@pytest.mark.parametrize("context", ["bidirectional", "cross"])
@torch.no_grad()
def test_lens_utilities_score_as_every_site_did(context: str) -> None:
    """``context.lens_utilities``, the one LensNet scorer of working contexts, gives the utilities
    the four sites computed by hand: a padded batch (training's on-policy layouts, masked), one
    context from a level table (the probe, the evaluation's arm) and from entries in hand (refocus)."""
    from megacontext_plugin.context import lens_utilities
    from megacontext_plugin.nets.lensnet import LensNet

    torch.manual_seed(0)
    K, N, D, H = 4, 64, 32, 4
    lensnet = LensNet(D, 16, 2, 2, context, max_level=3).eval()
    lensnet.score.weight.normal_()  # scores away from 0, so a difference shows
    levels = [torch.randn(2, N // K**level, D) for level in range(3)]
    table = LevelTable(levels, torch.zeros(2, N, dtype=torch.int64))
    query_RHD = torch.randn(2, H, D)
    short = WorkingContext.coarsest(N, K, H)
    wcs = [short.expand([0, 1]), short]
    assert len(wcs[1]) < len(wcs[0])  # row 1 is padded

    got = lens_utilities(lensnet, wcs, query_RHD, source=table, masked=True)
    for g, want in zip(got, _old_batch_scores(lensnet, table, wcs, query_RHD), strict=True):
        assert g.dtype == np.float32 and np.array_equal(g, want)
    assert np.ptp(got[0]) > 0.1

    wc = wcs[0]
    rows = EntryRows.of([wc])
    x_WD = table.gather(rows.seq_R.repeat(len(wc)), rows.levels_RW[0], rows.indices_RW[0])
    want = _old_one_scores(lensnet, x_WD, wc, query_RHD[:1])
    assert np.array_equal(lens_utilities(lensnet, [wc], query_RHD[:1], source=table)[0], want)
    assert np.array_equal(lens_utilities(lensnet, [wc], query_RHD[:1], entries_RWD=x_WD[None])[0], want)
    # one context read unmasked, a padded batch masked: the padding changes nothing of the longer row
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="source"):
        lens_utilities(lensnet, [wc], query_RHD[:1])
