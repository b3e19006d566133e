"""MCConfig: every documented knob parses in both spellings; mistakes give one clear error."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megacontext_plugin.config import (
    ConfigError,
    MCConfig,
    config_from_args,
    flag_names,
    knob_fields,
    parse_config,
    register_arguments,
)

# The knobs that the operating guide and the Foundation issue promise, spelled as users type them.
SEED_KNOBS = {
    "--mc": None,
    "--block_size": "8",
    "--mc_block_size": "128",
    "--mc_tree": "disk",
    "--mc_num_random_variants": "3",
    "--mc_train_wc_length": "0.25",
    "--mc_max_counterfactuals": "6",
    "--mc_lens_loss_weight": "0.2",
    "--mc_lens_temperature": "0.5",
    "--mc_lens_adv_norm_beta": "0.8",
    "--mc_lens_kl_weight": "0.05",
    "--mc_lens_budget_smooth_weight": "0.02",
    "--mc_lens_budget_smooth_beta": "0.95",
    "--mc_lens_hard_negative_ratio": "0.5",
    "--mc_auto_batch": "0",
    "--mc_aux_dtype": "bf16",
    "--allocator_type": "stochastic_greedy",
    "--allocator_sample_top_k": "5",
    "--allocator_sample_temperature": "2.0",
    "--allocator_soft_max_length": "900",
    "--allocator_recent_tokens": "32",
    "--allocator_expand_threshold": "0.3",
    "--allocator_collapse_threshold": "0.4",
    "--allocator_max_replacements": "3",
    "--allocator_iterations": "2",
    "--gistnet_layers": "3",
    "--gistnet_heads": "2",
    "--gistnet_pooling": "mean",
    "--lensnet_layers": "1",
    "--lensnet_heads": "2",
}


@pytest.mark.parametrize("flag", sorted(SEED_KNOBS))
@pytest.mark.parametrize("dashes", [False, True])
def test_every_seed_knob_parses_in_both_spellings(flag: str, dashes: bool) -> None:
    value = SEED_KNOBS[flag]
    spelled = "--" + flag[2:].replace("_", "-") if dashes else flag
    argv = [spelled] if value is None else [spelled, value]
    cfg = parse_config(argv)
    name = flag[2:].removeprefix("mc_") if flag == "--mc_block_size" else flag[2:]
    got = getattr(cfg, name)
    if value is None:
        assert got is True
    else:
        assert str(got) == value or got == type(got)(value)


def test_defaults_leave_megacontext_off_and_valid() -> None:
    cfg = parse_config([])
    assert cfg == MCConfig()
    assert cfg.mc is False
    assert cfg.mc_tree == "ram"
    assert cfg.num_variants == min(1 + cfg.mc_onpolicy_variants + cfg.mc_teacher_variants
                                   + cfg.mc_num_random_variants, cfg.mc_max_counterfactuals)


def test_every_field_has_underscore_and_dash_flags_and_help() -> None:
    for f in knob_fields():
        names = flag_names(f)
        assert f"--{f.name}" == names[0]
        assert f"--{f.name.replace('_', '-')}" in names
        assert f.metadata["help"]


def test_help_renders_every_knob() -> None:  # argparse %-formats help strings: a bare "%" would crash --help
    parser = argparse.ArgumentParser()
    register_arguments(parser)
    text = parser.format_help()
    assert all(f"--{f.name}" in text for f in knob_fields())


def test_num_variants_is_capped_by_max_counterfactuals() -> None:
    assert MCConfig(mc_num_random_variants=10, mc_max_counterfactuals=4).num_variants == 4
    assert MCConfig(mc_num_random_variants=2, mc_onpolicy_variants=0, mc_teacher_variants=0,
                    mc_max_counterfactuals=8).num_variants == 3
    # the cap drops random variants first, then teacher ones; on-policy ones go last
    assert MCConfig(mc_onpolicy_variants=1, mc_teacher_variants=2, mc_num_random_variants=5,
                    mc_max_counterfactuals=5).variant_counts == (1, 2, 1)
    assert MCConfig(mc_onpolicy_variants=2, mc_teacher_variants=3, mc_num_random_variants=1,
                    mc_max_counterfactuals=4).variant_counts == (2, 1, 0)


def test_training_needs_a_variant_besides_the_baseline() -> None:
    with pytest.raises(ConfigError, match="--mc_onpolicy_variants"):
        MCConfig(mc_onpolicy_variants=0, mc_teacher_variants=0, mc_num_random_variants=0)


@pytest.mark.parametrize(("T", "H"), [(64, 8), (256, 16), (512, 32), (2048, 64), (65536, 64)])
def test_mc_alone_works_at_any_sequence_length(T: int, H: int) -> None:
    """Defaults derive H (and so the raw tails) from the sequence length: --mc alone validates."""
    cfg = MCConfig(mc=True, block_size=8 if T < 256 else 32, mc_train_wc_length=0.5 if T < 256 else 0.2)
    resolved = cfg.for_model(T)
    assert resolved.mc_horizon == H
    assert resolved.training_tail(T) == resolved.prompt_tail(T) + H == 2 * H


def test_an_explicit_prompt_tail_wins_even_below_h() -> None:
    # LensNet's query is read from the tree's raw tokens, so the protected tail need not cover H (D55)
    assert MCConfig(mc_horizon=16).prompt_tail(512) == 16
    assert MCConfig(mc_horizon=16, allocator_recent_tokens=8).prompt_tail(512) == 8
    assert MCConfig(mc_horizon=16, allocator_recent_tokens=32).prompt_tail(512) == 32
    assert MCConfig(mc_horizon=16, allocator_recent_tokens=8).training_tail(512) == 8 + 16


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--mc_tree", "cloud"], "invalid choice: 'cloud'"),
        (["--block_size", "12"], "a power of two >= 2"),
        (["--block_size", "1"], "a power of two >= 2"),
        (["--mc_block_size", "-4"], "a power of two >= 2"),
        (["--allocator_expand_threshold", "1.5"], "[0, 1]"),
        (["--allocator_collapse_threshold", "-0.1"], "[0, 1]"),
        (["--allocator_recent_tokens", "-1"], ">= 0"),
        (["--mc_train_wc_length", "0"], "(0, 1]"),
        (["--mc_lens_temperature", "0"], "> 0"),
        (["--mc_lens_adv_norm_beta", "1.0"], "[0, 1)"),
        (["--mc_auto_batch", "yes"], "1|0"),
        (["--mc_aux_dtype", "fp16"], "invalid choice"),
        (["--allocator_type", "random"], "invalid choice"),
        (["--mc_horizon", "abc"], "expected int"),
        (["--mc_wc_budget", "100", "--allocator_soft_max_length", "200"], "--allocator_soft_max_length"),
        (["--mc_wc_budget", "64", "--allocator_recent_tokens", "64"], "--allocator_recent_tokens"),
    ],
)
def test_bad_values_give_one_clear_error(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


def test_direct_construction_raises_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--mc_tree.*ram\|disk"):
        MCConfig(mc_tree="s3")
    with pytest.raises(ConfigError, match="--block_size"):
        MCConfig(block_size=48)
    with pytest.raises(ConfigError, match="--gistnet_layers: expected int"):
        MCConfig(gistnet_layers=2.5)  # type: ignore[arg-type]


def test_config_from_args_without_parser_raises() -> None:
    ns = argparse.Namespace(mc_wc_budget=10, allocator_recent_tokens=20)
    with pytest.raises(ConfigError):
        config_from_args(ns)


def test_validate_for_model_catches_contradictions() -> None:
    MCConfig().validate_for_model(sequence_len=2048)
    with pytest.raises(ConfigError, match="sequence length"):
        MCConfig(mc_wc_budget=4096).validate_for_model(sequence_len=2048)
    with pytest.raises(ConfigError, match="--mc_horizon"):  # the training tail 2 x 256 leaves no room at 0.2
        MCConfig(mc_horizon=256).validate_for_model(sequence_len=2048)
    with pytest.raises(ConfigError, match="--mc_train_wc_length"):
        MCConfig(mc_train_wc_length=0.01).validate_for_model(sequence_len=2048)
    with pytest.raises(ConfigError, match="--block_size"):
        MCConfig(block_size=128, allocator_recent_tokens=8, mc_horizon=8).validate_for_model(sequence_len=64)


def test_flags_coexist_with_upstream_style_parser() -> None:
    """Registering on a parser that already has nanochat's own flags causes no conflict."""
    parser = argparse.ArgumentParser()
    for flag in ("--run", "--device-type", "--depth", "--max-seq-len", "--device-batch-size", "--model-tag"):
        parser.add_argument(flag)
    register_arguments(parser)
    ns = parser.parse_args(["--depth", "4", "--mc", "--mc-tree", "disk"])
    assert ns.depth == "4"
    assert config_from_args(ns, parser).mc_tree == "disk"


_FLOATS_IN_UNIT = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(expand=_FLOATS_IN_UNIT, collapse=_FLOATS_IN_UNIT, k=st.integers(min_value=1, max_value=10))
def test_valid_values_round_trip_through_the_command_line(expand: float, collapse: float, k: int) -> None:
    cfg = MCConfig(allocator_expand_threshold=expand, allocator_collapse_threshold=collapse, block_size=2**k)
    argv = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):
            argv += [f"--{f.name}"] if value else []
        else:
            argv += [f"--{f.name}", repr(value) if isinstance(value, float) else str(value)]
    assert parse_config(argv) == cfg


def test_cli_reports_a_user_mistake_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "megacontext_plugin.cli", "config", "--mc_tree", "cloud"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--mc_tree" in proc.stderr and "ram" in proc.stderr


def test_knob_reference_in_docs_is_generated_from_the_config() -> None:
    from pathlib import Path

    from megacontext_plugin.config import knobs_markdown

    reference = (Path(__file__).resolve().parents[1] / "docs" / "knobs.md").read_text()
    begin, end = "<!-- knobs:begin -->\n", "<!-- knobs:end -->"
    table = reference[reference.index(begin) + len(begin): reference.index(end)]
    assert table == knobs_markdown(), "docs/knobs.md's table is stale: paste `megacontext config --markdown`"


@pytest.mark.parametrize(("argv", "on"), [
    (["--mc_enabled=1"], True), (["--mc-enabled", "0"], False),
    (["--mc", "--mc_enabled", "0"], False), (["--mc_enabled", "0", "--mc"], True),
])
def test_the_guides_mc_enabled_spelling_is_mc(argv: list[str], on: bool) -> None:
    assert parse_config(argv).mc is on


def test_mc_enabled_takes_only_one_or_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "config", "--mc_enabled", "yes"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2 and "allowed: 1|0" in proc.stderr and "Traceback" not in proc.stderr


def test_the_record_of_explicit_knobs_is_json_serialisable() -> None:
    """nanochat writes vars(args) into its checkpoint's JSON meta."""
    import json

    from megacontext_plugin.config import explicit_knobs, register_arguments

    parser = argparse.ArgumentParser()
    register_arguments(parser)
    args = parser.parse_args(["--mc", "--block_size", "8", "--mc-horizon", "16"])
    assert explicit_knobs(args) == {"block_size", "mc_horizon"}
    json.dumps(vars(args))


def test_a_saved_config_round_trips_and_a_setting_of_another_version_is_named() -> None:
    from megacontext_plugin.config import ConfigError, MCConfig, config_from_saved

    cfg = MCConfig(mc=True, block_size=8, mc_horizon=16)
    assert config_from_saved(cfg.as_dict()) == cfg
    with pytest.raises(ConfigError, match=r"another version.*mc_knob_from_elsewhere"):
        config_from_saved({**cfg.as_dict(), "mc_knob_from_elsewhere": 0.3})
    with pytest.raises(ConfigError):  # a saved value is checked like a flag
        config_from_saved({**cfg.as_dict(), "block_size": 0})


def test_register_arguments_adds_only_the_knobs_asked_for_with_their_defaults_checked() -> None:
    parser = argparse.ArgumentParser()
    register_arguments(parser, only=["block_size", "mc_horizon"], defaults={"block_size": 8})
    assert vars(parser.parse_args([])) == {"block_size": 8, "mc_horizon": 0}
    assert "--mc" not in parser._option_string_actions and "--mc-block-size" in parser._option_string_actions
    with pytest.raises(ValueError, match="no_such_knob"):
        register_arguments(argparse.ArgumentParser(), only=["no_such_knob"])
    with pytest.raises(ValueError, match="mc_horizon"):
        register_arguments(argparse.ArgumentParser(), only=["block_size"], defaults={"mc_horizon": 8})
    with pytest.raises(ConfigError, match="power of two"):
        register_arguments(argparse.ArgumentParser(), only=["block_size"], defaults={"block_size": 12})
