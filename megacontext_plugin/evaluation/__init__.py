"""Long-context quality evaluation (``docs/decisions.md`` D22): truncation, uniform compression, MegaContext and full
attention at one working-context budget, on seeded tasks (``long_context``), and the tiny CPU
recipe that trains the models it needs (``train_tiny``)."""

from __future__ import annotations

import argparse

DESCRIPTION = ("Long-context quality: `eval train-tiny --out DIR` trains the tiny byte-level model and aux nets; "
               "`eval long-context --checkpoint DIR/tiny.pt --budget W --lengths 1,2,4,8` compares truncation, "
               "uniform compression, MegaContext and full attention at budget W (table, JSON, PNG).")


def add_parsers(p_eval: argparse.ArgumentParser) -> None:
    """Wire ``long-context``, ``train-tiny`` and ``validate`` under ``megacontext eval``."""
    from . import long_context, long_context_cli, train_tiny, validate_cli

    sub = p_eval.add_subparsers(dest="eval_command", required=True)
    p_lc = sub.add_parser("long-context", help="compare the arms at a fixed working-context budget",
                          description=long_context.__doc__.splitlines()[0])
    long_context_cli.add_arguments(p_lc)
    p_lc.set_defaults(func=lambda a: long_context_cli.run(a, p_lc))
    p_tt = sub.add_parser("train-tiny", help="train the tiny byte-level model and aux nets the evaluation uses",
                          description=train_tiny.__doc__.splitlines()[0])
    train_tiny.add_arguments(p_tt)
    p_tt.set_defaults(func=lambda a: train_tiny.run(a, p_tt))
    p_va = sub.add_parser("validate", help="the post-run validation (base_eval --mc's) of any checkpoint of a "
                          "nanochat run, offline, into its report", description=validate_cli.__doc__.splitlines()[0])
    validate_cli.add_arguments(p_va)
    p_va.set_defaults(func=lambda a: validate_cli.run(a, p_va))
