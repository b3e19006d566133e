"""``megacontext eval train-tiny``'s command line: the MegaContext knobs under their config names, with
the stand-in recipe's defaults, and a bad value as one line (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from megacontext_plugin.cli import build_parser, main
from megacontext_plugin.config import MCConfig, flag_names, knob_fields
from megacontext_plugin.focus.budget import curriculum_budget
from megacontext_plugin.training.tiny_recipe import TRAINED_KNOBS, add_arguments, tiny_config

MEASURED_KNOBS = {
    "block_size": 8, "allocator_recent_tokens": 16, "mc_horizon": 16, "mc_train_wc_length": 64 / 512,
    "mc_anneal_fraction": 0.15, "mc_num_random_variants": 2, "mc_onpolicy_variants": 1, "mc_teacher_variants": 2,
    "allocator_expand_neighbours": 1, "allocator_expand_threshold": 0.1, "allocator_collapse_threshold": 0.3,
    "mc_lens_teacher_weight": 1.0, "mc_aux_lr": 2e-3, "gistnet_layers": 1, "lensnet_layers": 1, "lensnet_dim": 64,
    "mc_seed": 0,
}
"""The knobs the stand-in was measured with (README): what the recipe's mirrored flags defaulted to
(``--budget 64`` of ``--mc-len 512``, ``--anneal 0.15``, ``--block-size 8``, ``--recent 16``,
``--horizon 16``, ``--variants 2``, ``--onpolicy 1``, ``--teacher 2``, ``--neighbours 1``,
``--expand-threshold 0.1``, ``--collapse-threshold 0.3``, ``--lens-teacher-weight 1``, ``--aux-lr 2e-3``,
``--lens-layers 1``, ``--lens-dim 64``, ``--seed 0``; GistNet 1 layer); every other knob the product's."""

MEASURED_RECIPE = {"plain_len": 256, "plain_steps": 1600, "plain_batch": 16, "plain_short_steps": 800, "mc_len": 512,
                   "mc_steps": 1200, "mc_batch": 8, "mix_batch": 4, "answer_weight": 1.0, "lr": 3e-3, "layers": 2,
                   "width": 128, "heads": 4, "seed": 0}


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["eval", "train-tiny", "--out", "unused", *argv])


def test_the_defaults_are_the_recipe_the_stand_in_was_measured_with() -> None:
    args = _parse()
    assert {k: getattr(args, k) for k in MEASURED_RECIPE} == MEASURED_RECIPE
    cfg = tiny_config(args)
    assert cfg == MCConfig(mc=True, **MEASURED_KNOBS)
    # the budget of every MC step is the one the earlier recipe trained at: it annealed over 15% of the
    # phase as the whole of a 180-step schedule (--anneal), now as --mc_anneal_fraction of the 1,200 steps
    earlier = MCConfig(mc=True, **(MEASURED_KNOBS | {"mc_anneal_fraction": 1.0}))
    steps = MEASURED_RECIPE["mc_steps"]
    assert [curriculum_budget(cfg, s, steps, 512, 0) for s in range(steps)] == \
        [curriculum_budget(earlier, s, round(0.15 * steps), 512, 0) for s in range(steps)]


def test_knobs_are_taken_by_their_config_names_in_every_spelling() -> None:
    cfg = tiny_config(_parse("--block_size", "16", "--mc-horizon", "8", "--mc_lensnet_dim", "32",
                             "--allocator_collapse_threshold=0.2", "--mc_train_wc_length", "0.25"))
    assert (cfg.block_size, cfg.mc_horizon, cfg.lensnet_dim, cfg.allocator_collapse_threshold,
            cfg.mc_train_wc_length) == (16, 8, 32, 0.2, 0.25)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = parser._option_string_actions
    for f in knob_fields():  # the knobs it trains with, each in all its spellings; no other knob
        assert all((name in options) == (f.name in TRAINED_KNOBS) for name in flag_names(f)), f.name


@pytest.mark.parametrize(("argv", "words"), [
    (["--block_size", "12"], "argument --block_size/--block-size/--mc_block_size/--mc-block-size: got 12; allowed: a "
                             "power of two >= 2"),
    (["--mc_horizon", "many"], "expected int"),
    (["--allocator_expand_threshold", "5"], "allowed: a number in [0, 1]"),
    (["--mc_train_wc_length", "0.0625"], "not more than the raw tail of a training variant"),
    (["--mc_num_random_variants", "0", "--mc_onpolicy_variants", "0", "--mc_teacher_variants", "0"],
     "training needs at least one variant"),
    (["--horizon", "8"], "unrecognized arguments: --horizon 8; did you mean --mc_horizon?"),
    (["--lens-dim", "32"], "did you mean --lensnet_dim?"),
])
def test_a_bad_knob_is_one_line_with_exit_2(argv: list[str], words: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["eval", "train-tiny", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("megacontext eval train-tiny: error: ") and words in err, err
    assert not out.exists()
