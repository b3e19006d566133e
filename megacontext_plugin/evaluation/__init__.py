"""Long-context quality evaluation (``docs/decisions.md`` D22): truncation, uniform compression, MegaContext and full
attention at one working-context budget, on seeded tasks (``long_context``), and the post-run validation of a
nanochat run (``validate_cli``). The tiny models it evaluates are trained by ``training.tiny_recipe``; ``cli``
wires that recipe's ``train-tiny`` beside these commands under ``megacontext eval``."""

from __future__ import annotations

import argparse

DESCRIPTION = ("Long-context quality: `eval train-tiny --out DIR` trains the tiny byte-level model and aux nets; "
               "`eval long-context --checkpoint DIR/tiny.pt --budget W --lengths 1,2,4,8` compares truncation, "
               "uniform compression, MegaContext and full attention at budget W (table, JSON, PNG).")


def add_long_context_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``megacontext eval long-context``."""
    from . import long_context, long_context_cli

    p_lc = sub.add_parser("long-context", help="compare the arms at a fixed working-context budget",
                          description=long_context.__doc__.splitlines()[0])
    long_context_cli.add_arguments(p_lc)
    p_lc.set_defaults(func=lambda a: long_context_cli.run(a, p_lc))


def add_validate_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``megacontext eval validate``."""
    from . import validate_cli

    p_va = sub.add_parser("validate", help="the post-run validation (base_eval --mc's) of any checkpoint of a "
                          "nanochat run, offline, into its report", description=validate_cli.__doc__.splitlines()[0])
    validate_cli.add_arguments(p_va)
    p_va.set_defaults(func=lambda a: validate_cli.run(a, p_va))
