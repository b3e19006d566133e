"""The ``megacontext`` command.

- ``megacontext config [--mc ...]``: validate MegaContext flags and print the resolved knobs.
- ``megacontext demo``: the offline end-to-end run of tree, working context and allocator.
- ``megacontext corpus --out DIR``: the seeded long-context corpus as nanochat parquet shards.
- ``megacontext tasks --out DIR``: seeded chat conversations (CustomJSON JSONL) for mid-training and SFT.
- ``megacontext nanochat apply|verify|revert DIR``: our patches to an upstream nanochat tree at one of the
  supported commits (the pin a91743c or master 92d63d4; the tree's files tell which).
- ``megacontext eval train-tiny|long-context``: the long-context quality evaluation and its tiny CPU models.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence

from megacontext_plugin.arg_errors import one_line_errors
from megacontext_plugin.config import config_from_args, knobs_markdown, register_arguments


def _cmd_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.markdown:
        print(knobs_markdown(), end="")
        return 0
    cfg = config_from_args(args, parser)
    values = cfg.as_dict()
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        width = max(len(k) for k in values)
        for key, value in values.items():
            print(f"{key.ljust(width)}  {value}")
    return 0


def _cmd_nanochat(args: argparse.Namespace) -> int:
    from megacontext_plugin import nanochat_patch

    try:
        if args.action == "verify":
            status = nanochat_patch.verify(args.dir)
            print("\n".join(status.describe()))
            return 0 if status.ok else 1
        changed = getattr(nanochat_patch, args.action)(args.dir)
        status = nanochat_patch.verify(args.dir)
    except nanochat_patch.PatchError as exc:
        print(f"megacontext nanochat {args.action}: error: {exc}", file=sys.stderr)
        return 2
    done = {"apply": ("patched", "already patched"), "revert": ("reverted to pristine", "already pristine")}
    print(f"{args.dir}: {done[args.action][0 if changed else 1]}")
    if args.action == "apply":
        print(f"{status.recipes} with arguments install the plugin from: {status.source} "
              f"(recorded in {nanochat_patch.SOURCE_FILE}; MEGACONTEXT_PLUGIN overrides)")
    if status.note:
        print(status.note)
    return 0


def version_line() -> str:
    """``megacontext-plugin VERSION from LOCATION``: the installed distribution's version (package metadata)
    and where the code that runs was imported from, as ``pip --version`` does."""
    from importlib.metadata import PackageNotFoundError, version

    from megacontext_plugin import nanochat_patch

    try:
        ver = version(nanochat_patch.DISTRIBUTION)
    except PackageNotFoundError:  # imported from a source tree that was never installed
        ver = "(not installed)"
    return f"{nanochat_patch.DISTRIBUTION} {ver} from {nanochat_patch.PACKAGE_DIR}"


class _VersionAction(argparse.Action):
    """``--version``: one line, unwrapped (argparse's own version action wraps it to the terminal width)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(version_line())
        parser.exit()


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")


def plain(text: str | None) -> str | None:
    """TEXT with reStructuredText/Markdown inline markup made plain: help texts come from docstrings, and a
    terminal shows backticks literally. ``x`` and `x` become 'x'; :class:`x` becomes x."""
    if text is None:
        return None
    text = _ROLE.sub(r"\1", text)
    return _LITERAL.sub(lambda m: f"'{m.group(1) or m.group(2)}'", text)


def _walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help)
            for sub in dict.fromkeys(action.choices.values()):
                yield from _walk(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megacontext", description="MegaContext for nanochat: long-context memory "
                                     "at constant compute. Each command has its own --help.")
    parser.add_argument("--version", action=_VersionAction, help="print the installed version and where it runs from")
    sub = parser.add_subparsers(dest="command", required=True)

    p_config = sub.add_parser("config", help="validate MegaContext flags and print the resolved knobs",
                              usage="megacontext config [--json | --markdown] [--mc] [--KNOB VALUE ...]")
    p_config.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_config.add_argument("--markdown", action="store_true", help="print the knob reference as a Markdown table")
    register_arguments(p_config)
    p_config.set_defaults(func=lambda a: _cmd_config(a, p_config))

    from megacontext_plugin.data import conversations, corpus
    from megacontext_plugin.demo import add_demo_parser

    add_demo_parser(sub)
    p_corpus = sub.add_parser("corpus", help="write the offline long-context corpus as nanochat parquet shards",
                              description=corpus.DESCRIPTION)
    corpus.add_arguments(p_corpus)
    p_corpus.set_defaults(func=lambda a: corpus.run(a, p_corpus))
    p_tasks = sub.add_parser("tasks", help="write offline chat conversations for nanochat mid-training and SFT",
                             description=conversations.DESCRIPTION)
    conversations.add_arguments(p_tasks)
    p_tasks.set_defaults(func=lambda a: conversations.run(a, p_tasks))
    from megacontext_plugin import evaluation

    p_eval = sub.add_parser("eval", help="long-context quality evaluation (train-tiny, long-context)",
                            description=evaluation.DESCRIPTION)
    evaluation.add_parsers(p_eval)

    p_nano = sub.add_parser("nanochat", help="apply, verify or revert our patches to an upstream nanochat tree",
                            description="Patch an upstream nanochat tree at a supported commit: the pin a91743c or "
                                        "master 92d63d4, told by the tree's files (verify exits 0 only when fully "
                                        "patched; user mistakes exit 2).")
    nano_sub = p_nano.add_subparsers(dest="action", required=True)
    for action, text in (("apply", "apply the patches (a no-op if already patched) and record this plugin's "
                                   "source for the patched recipes"),
                         ("verify", "report pristine/patched/modified/missing per touched file, and the source"),
                         ("revert", "restore the pristine files and remove the source record")):
        p_act = nano_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p_act.add_argument("dir", metavar="DIR", help="the nanochat checkout or extract")
    p_nano.set_defaults(func=_cmd_nanochat)
    parsers = list(_walk(parser))
    every_option = {o for p in parsers for o in p._option_string_actions}
    for each in parsers:
        each.description = plain(each.description)
        for action in each._actions:
            action.help = plain(action.help)
        one_line_errors(each, options=lambda: every_option)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
