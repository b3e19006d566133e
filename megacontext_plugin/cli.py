"""The ``megacontext`` command.

- ``megacontext config [--mc ...]``: validate MegaContext flags and print the resolved knobs.
- ``megacontext demo``: the offline end-to-end run of tree, working context and allocator.
- ``megacontext corpus --out DIR``: the seeded long-context corpus as nanochat parquet shards.
- ``megacontext tasks --out DIR``: seeded chat conversations (CustomJSON JSONL) for mid-training and SFT.
- ``megacontext nanochat apply|verify|revert DIR``: our patches to an upstream nanochat tree at one of the
  supported commits (the pin a91743c or master 92d63d4; the tree's files tell which).
- ``megacontext nanochat run SCRIPT [--run-dir DIR] [--nanochat DIR] -- ARGS...``: ``python -m scripts.SCRIPT
  ARGS`` inside the patched tree, on a run's directory (``NANOCHAT_BASE_DIR``).
- ``megacontext shards --tokens N``: the pretraining shards a nanochat run needs (upstream's arithmetic).
- ``megacontext eval train-tiny|long-context``: the long-context quality evaluation and its tiny CPU models.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

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


RUN_PROG = "megacontext nanochat run"
DEFAULT_TREE = ".mc/nanochat"
DEFAULT_RUN_DIR = ".mc/runcpu"


def _run_error(message: str) -> int:
    print(f"{RUN_PROG}: error: {message}", file=sys.stderr)
    return 2


def wants_megacontext(script_args: Sequence[str]) -> bool:
    """Whether ``script_args`` turn MegaContext on (``--mc``, or ``--mc_enabled 1``; the last one given wins),
    read as the scripts read them."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    register_arguments(parser)

    def error(message: str) -> None:  # a bad knob value is the script's to report; here only --mc matters
        raise ValueError(message)

    parser.error = error  # type: ignore[method-assign,assignment]
    try:
        known, _ = parser.parse_known_args(list(script_args))
    except ValueError:
        return "--mc" in script_args
    return bool(known.mc)


def _cmd_nanochat_run(args: argparse.Namespace) -> int:
    """``python -m scripts.SCRIPT ARGS`` in the patched tree, as the recipes run it: this interpreter (the
    venv's), PYTHONPATH the tree, NANOCHAT_BASE_DIR the run's directory, NANOCHAT_PLUGINS by ``--mc``."""
    tree_given = args.nanochat or os.environ.get("MC_NANOCHAT") or DEFAULT_TREE
    tree = Path(tree_given).expanduser().resolve()
    scripts = tree / "scripts"
    if not scripts.is_dir():
        return _run_error(f"{tree_given} is not a nanochat tree (no scripts/ inside): run integration/mc_setup, run "
                          f"this from the repository root, or name the tree with --nanochat DIR or MC_NANOCHAT")
    names = sorted(p.stem for p in scripts.glob("*.py") if p.stem != "__init__")
    script = args.script.removesuffix(".py").removeprefix("scripts/").removeprefix("scripts.")
    if script not in names:
        return _run_error(f"unknown script '{args.script}'; {tree_given}/scripts has: {', '.join(names)}")
    run_given = args.run_dir or DEFAULT_RUN_DIR
    run_dir = Path(run_given).expanduser().resolve()
    if not run_dir.is_dir():
        return _run_error(f"no run directory {run_given} (the NANOCHAT_BASE_DIR of a run: integration/runcpu.sh "
                          f"makes {DEFAULT_RUN_DIR}; --run-dir DIR names another)")
    script_args = list(args.script_args)
    plugins = "megacontext" if wants_megacontext(script_args) else "none"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["NANOCHAT_BASE_DIR"] = str(run_dir)
    env["NANOCHAT_PLUGINS"] = plugins
    print(f"{RUN_PROG}: scripts.{script} in {tree}, NANOCHAT_BASE_DIR={run_dir}, NANOCHAT_PLUGINS={plugins}",
          file=sys.stderr, flush=True)
    try:
        proc = subprocess.run([sys.executable, "-m", f"scripts.{script}", *script_args], cwd=tree, env=env,
                              check=False)
    except KeyboardInterrupt:  # the script got the same Ctrl-C; no traceback of ours on top of its own
        return 130
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def _cmd_nanochat(args: argparse.Namespace) -> int:
    from megacontext_plugin import nanochat_patch

    if args.action == "run":
        return _cmd_nanochat_run(args)
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

    from megacontext_plugin.data import corpus, tasks_cli
    from megacontext_plugin.demo import add_demo_parser

    add_demo_parser(sub)
    p_corpus = sub.add_parser("corpus", help="write the offline long-context corpus as nanochat parquet shards",
                              description=corpus.DESCRIPTION)
    corpus.add_arguments(p_corpus)
    p_corpus.set_defaults(func=lambda a: corpus.run(a, p_corpus))
    p_tasks = sub.add_parser("tasks", help="write offline chat conversations for nanochat mid-training and SFT",
                             description=tasks_cli.DESCRIPTION)
    tasks_cli.add_arguments(p_tasks)
    p_tasks.set_defaults(func=lambda a: tasks_cli.run(a, p_tasks))
    from megacontext_plugin import evaluation
    from megacontext_plugin.training import tiny_recipe

    p_eval = sub.add_parser("eval", help="long-context quality evaluation (train-tiny, long-context)",
                            description=evaluation.DESCRIPTION)
    # train-tiny is training's recipe (it trains with the controller), listed under eval for the models it makes
    eval_sub = p_eval.add_subparsers(dest="eval_command", required=True)
    evaluation.add_long_context_parser(eval_sub)
    tiny_recipe.add_parser(eval_sub)
    evaluation.add_validate_parser(eval_sub)

    p_nano = sub.add_parser("nanochat", help="apply, verify or revert our patches to an upstream nanochat tree; "
                                             "run one of its scripts",
                            description="Patch an upstream nanochat tree at a supported commit: the pin a91743c or "
                                        "master 92d63d4, told by the tree's files (verify exits 0 only when fully "
                                        "patched; user mistakes exit 2); run one of the patched tree's scripts.")
    nano_sub = p_nano.add_subparsers(dest="action", required=True)
    for action, text in (("apply", "apply the patches (a no-op if already patched) and record this plugin's "
                                   "source for the patched recipes"),
                         ("verify", "report pristine/patched/modified/missing per touched file, and the source"),
                         ("revert", "restore the pristine files and remove the source record")):
        p_act = nano_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p_act.add_argument("dir", metavar="DIR", help="the nanochat checkout or extract")
    run_text = ("run `python -m scripts.SCRIPT ARGS` in the patched tree with this Python, PYTHONPATH the tree, "
                "NANOCHAT_BASE_DIR the run's directory and NANOCHAT_PLUGINS=megacontext when ARGS hold --mc (none "
                "otherwise)")
    p_run = nano_sub.add_parser("run", help=run_text, description=run_text[0].upper() + run_text[1:] + ". The "
                                "script's arguments go after --.",
                                usage=f"{RUN_PROG} SCRIPT [--run-dir DIR] [--nanochat DIR] -- ARGS...")
    p_run.add_argument("script", metavar="SCRIPT", help="a script of the tree's scripts/ (chat_cli, base_eval, ...)")
    p_run.add_argument("--run-dir", metavar="DIR", help=f"the run's NANOCHAT_BASE_DIR (default {DEFAULT_RUN_DIR}, "
                                                        "where integration/runcpu.sh trains; it must exist)")
    p_run.add_argument("--nanochat", metavar="DIR", help=f"the patched tree (default: MC_NANOCHAT, else "
                                                         f"{DEFAULT_TREE})")
    p_nano.set_defaults(func=_cmd_nanochat)
    from megacontext_plugin.data import shards

    p_shards = sub.add_parser("shards", help="how many pretraining shards a nanochat run of N tokens needs",
                              description=shards.DESCRIPTION)
    shards.add_arguments(p_shards)
    p_shards.set_defaults(func=lambda a: shards.run(a, p_shards))
    for each in _walk(parser):
        each.description = plain(each.description)
        for action in each._actions:
            action.help = plain(action.help)
        one_line_errors(each)
    return parser


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand's parser ``args`` were parsed with: its flags are the ones a
    mistyped flag is closest to (another subcommand's flag of that name would be the wrong hint)."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or name is None:
            return parser
        parser = sub.choices[name]


def _split_script_args(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """``nanochat run ... -- ARGS``: (what we parse, ARGS); None for any other command line."""
    if "--" not in argv:
        return None
    cut = argv.index("--")
    words = [a for a in argv[:cut] if not a.startswith("-")]
    return (argv[:cut], argv[cut + 1:]) if words[:2] == ["nanochat", "run"] else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    split = _split_script_args(argv)
    ours, script_args = split if split is not None else (argv, [])
    args, extra = parser.parse_known_args(ours)
    running = args.command == "nanochat" and args.action == "run"
    if extra:
        if running:
            return _run_error(f"unrecognized arguments: {' '.join(extra)} (the script's arguments go after --: "
                              f"megacontext nanochat run {args.script} -- {' '.join(extra)})")
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")  # as parse_args says it
    if running:
        args.script_args = script_args
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
