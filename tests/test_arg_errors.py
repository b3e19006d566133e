"""Our flags' mistakes are one line and exit status 2 (usage only with --help), a mistyped knob names
the closest one; an upstream script's mistakes about its own flags stay upstream's."""

from __future__ import annotations

import argparse

import pytest
from test_plugin import _manager

from megacontext_plugin.arg_errors import closest_flag
from megacontext_plugin.cli import main
from megacontext_plugin.plugin import MegaContextPlugin


def host_parser() -> argparse.ArgumentParser:
    """An upstream script's parser with the plugin's flags, as the patched scripts build it."""
    pm = _manager()
    pm.register(MegaContextPlugin(), name="megacontext")
    parser = argparse.ArgumentParser(prog="base_train")
    parser.add_argument("--device-batch-size", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    pm.hook.register_arguments(parser=parser)
    return parser


def error_of(parse: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        parse(argv)  # type: ignore[operator]
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    (["--mc", "--mc_budget", "64"], "unrecognized arguments: --mc_budget 64; did you mean --mc_wc_budget?"),
    (["--mc", "--mc-budget=64"], "did you mean --mc_wc_budget?"),
    (["--mc", "--recent_tokens", "8"], "did you mean --allocator_recent_tokens?"),
    (["--mc", "--mc_wc_budget", "lots"], "argument --mc_wc_budget"),
    (["--mc", "--mc_tree", "cloud"], "invalid choice: 'cloud'"),
])
def test_a_mistake_about_our_flags_is_one_line(argv: list[str], words: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, err = error_of(host_parser().parse_args, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "usage" not in err, err
    assert err.startswith("base_train: error: ") and words in err, err


def test_upstream_mistakes_stay_upstreams(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = error_of(host_parser().parse_args, ["--device-batch-sise", "8"], capsys)
    assert code == 2 and err.startswith("usage: base_train") and "unrecognized arguments" in err
    code, err = error_of(host_parser().parse_args, ["--max-seq-len", "long"], capsys)
    assert code == 2 and err.startswith("usage: base_train") and "--max-seq-len" in err


def test_help_still_shows_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for parse, argv in ((host_parser().parse_args, ["--help"]), (main, ["config", "--help"])):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "words"), [
    (["config", "--mc_budget", "64"], "did you mean --mc_wc_budget?"),
    (["config", "--jsn"], "did you mean --json?"),
    (["config", "--mc", "--mc_wc_budget", "abc"], "argument --mc_wc_budget"),
    (["nanochat", "aply", "x"], "invalid choice: 'aply'"),
    (["eval", "long-context"], "the following arguments are required"),
    (["config", "--mc", "--allocator_recent_tokens", "4096", "--mc_wc_budget", "64"], "--allocator_recent_tokens"),
])
def test_the_megacontext_command_errors_in_one_line(argv: list[str], words: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, err = error_of(main, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "usage" not in err and words in err, err


def test_closest_flag_reads_dashes_and_underscores_alike() -> None:
    flags = ["--mc_wc_budget", "--mc-wc-budget", "--block_size", "--json"]
    assert closest_flag("--mc-wc-budgt", flags) == "--mc_wc_budget"
    assert closest_flag("--zzz", flags) is None
