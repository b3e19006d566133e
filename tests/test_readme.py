"""The README's commands and links work: every link into this repository names a file of the checkout,
every script a command runs exists, every ``megacontext`` subcommand and its flags are real, and every
MegaContext knob a code block passes is one the config defines."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from megacontext_plugin import cli
from megacontext_plugin.config import flag_names, knob_fields, knobs_markdown, register_arguments

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"].rstrip("/")
CODE_BLOCKS = re.findall(r"^```[^\n]*\n(.*?)^```", README, flags=re.S | re.M)
KNOB_PREFIX = re.compile(r"(?<![\w-])(--(?:mc_|allocator_|gistnet_|lensnet_|block_size)[\w-]*)")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:integration|benchmarks|docs|tests|megacontext_plugin|\.ci)/[\w./-]*\w)")


HELP_SCRIPT = """
import json, runpy, sys
for path in json.loads(sys.argv[1]):
    sys.argv = ["megacontext", *path, "--help"]
    try:
        runpy.run_module("megacontext_plugin.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    print(f"EXIT {' '.join(path)}: {code}", file=sys.stderr)
"""
"""Runs ``python -m megacontext_plugin.cli PATH... --help`` for each subcommand path in argv[1] (JSON)."""


def command_lines(blocks: list[str]) -> list[str]:
    """Every line of ``blocks`` (code blocks' bodies), continuation lines joined, comments dropped."""
    lines: list[str] = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in an output example: split on blanks
        return line.split()


def _upstream_files() -> set[str]:
    """The upstream nanochat files our patches touch: the ones a README command may run inside the patched tree."""
    files: set[str] = set()
    for manifest in (ROOT / "megacontext_plugin" / "patches").rglob("manifest.json"):
        files |= set(json.loads(manifest.read_text())["files"])
    return files


def _megacontext_commands() -> list[list[str]]:
    """The words after ``megacontext`` in every README command that runs it (console script or module), in code
    blocks and in inline code."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    inline = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for line in command_lines(CODE_BLOCKS) + inline:
        words = _words(line)
        for i, word in enumerate(words):
            console_script = Path(word).name == "megacontext"
            module = word == "megacontext_plugin.cli" and i > 0 and words[i - 1] == "-m"
            if console_script or module:
                commands.append(words[i + 1:])
    return commands


def _subcommand(args: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The subcommand path (``["eval", "long-context"]``) that ARGS name, and its parser."""
    parser, path = cli.build_parser(), []
    while args and not args[0].startswith("-"):
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if choices is None:
            break
        assert args[0] in choices, f"README: 'megacontext {' '.join([*path, args[0]])}' is not a subcommand"
        path.append(args[0])
        parser, args = choices[args[0]], args[1:]
    return path, parser


def test_readme_is_short_and_opens_with_the_two_setup_commands() -> None:
    assert len(README.splitlines()) <= 300, "the README is the short path: details go to docs/reference.md"
    assert CODE_BLOCKS[0] == "bash integration/runcpu.sh --mc\n.venv/bin/python -m pytest -q -n auto\n"


def test_links_into_this_repository_resolve_in_the_checkout() -> None:
    urls = re.findall(re.escape(REPO_URL) + r"[^\s)>\]`'\"]*", README)
    linked = set()
    for url in urls:
        m = re.fullmatch(re.escape(REPO_URL) + r"/(blob|tree)/main/([^#?]+)(?:#[\w-]+)?", url)
        assert m, f"README: {url} is not a blob/tree link on main"
        target = ROOT / m[2]
        assert (target.is_file() if m[1] == "blob" else target.is_dir()), f"README: {url}: no {m[2]} in the checkout"
        linked.add(m[2])
    assert {"docs/architecture.md", "docs/decisions.md", "docs/knobs.md"} <= linked, linked


def test_repository_paths_the_readme_names_exist() -> None:
    paths = {p for p in REPO_PATH.findall(README) if "NAME" not in p}  # benchmarks/NAME.py: a placeholder
    assert {"integration/runcpu.sh", "integration/runcpu_quality.sh", "benchmarks/nanochat_quality.py"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README names paths that are not in the checkout: {missing}"


def test_commands_run_scripts_that_exist() -> None:
    upstream = _upstream_files()
    scripts, modules = [], []
    for line in command_lines(CODE_BLOCKS):
        words = _words(line)
        for i, word in enumerate(words[:-1]):
            if word == "bash" or (word.endswith("python") and words[i + 1].endswith(".py")):
                scripts.append(words[i + 1])
            elif word == "-m" and words[i + 1].startswith("scripts."):
                modules.append(words[i + 1])
            elif words[i:i + 2] == ["nanochat", "run"] and i + 2 < len(words):  # megacontext nanochat run SCRIPT
                modules.append("scripts." + words[i + 2])
    assert "integration/runcpu.sh" in scripts and any(s.startswith("benchmarks/") for s in scripts), scripts
    for script in scripts:  # ours, or upstream's that the patched tree runs (speedrun.sh)
        assert (ROOT / script).is_file() or script in upstream, f"README runs {script}: no such script"
    assert modules
    for module in modules:
        assert module.replace(".", "/") + ".py" in upstream, f"README runs -m {module}: not a script our patch hooks"


def test_megacontext_subcommands_and_their_flags_are_real() -> None:
    commands = _megacontext_commands()
    assert len(commands) >= 3
    paths = set()
    for args in commands:
        path, parser = _subcommand(args)
        if path:
            paths.add(tuple(path))
        else:
            assert args and all(a.startswith("-") for a in args), f"README: 'megacontext {' '.join(args)}'"
        for word in args[len(path):]:
            if word == "--":  # the rest is the nanochat script's (`megacontext nanochat run SCRIPT -- ARGS`)
                break
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                assert flag in parser._option_string_actions, f"README: megacontext {' '.join(path)} has no {flag}"
    assert {("demo",), ("config",), ("eval", "long-context"), ("nanochat", "apply")} <= paths, paths
    # and each one answers --help as `python -m megacontext_plugin.cli SUBCOMMAND --help` does, in one fresh
    # interpreter (starting one per subcommand would import torch each time: seconds apiece on a small machine)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT, json.dumps(sorted(paths))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    exits = [line.split(" ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("EXIT ")]
    assert exits == [f"{' '.join(path)}: 0" for path in sorted(paths)], proc.stderr


def test_knob_flags_in_code_blocks_are_knobs_of_the_config() -> None:
    parser = argparse.ArgumentParser()
    register_arguments(parser)
    known = {name for f in knob_fields() for name in flag_names(f)} | set(parser._option_string_actions)
    flags = {flag for block in CODE_BLOCKS for flag in KNOB_PREFIX.findall(block)}
    assert {"--block_size", "--mc_tree", "--mc_session"} <= flags, flags
    unknown = sorted(flags - known)
    assert not unknown, f"README code blocks pass flags that are no MegaContext knob: {unknown}"


def test_the_short_knob_table_agrees_with_the_config() -> None:
    generated = {}
    for row in knobs_markdown().splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        generated[cells[0].split(" ")[0].strip("`")] = cells[1]
    section = README[README.index("## Knobs"):README.index("\n## ", README.index("## Knobs") + 1)]
    rows = [r for r in section.splitlines() if r.startswith("| `--")]
    assert len(rows) >= 8
    for row in rows:
        flag, default = (c.strip() for c in row.strip("|").split(" | ")[:2])
        flag = flag.strip("`")
        assert flag in generated, f"README knob table: {flag} is not a knob"
        assert default == generated[flag], f"README knob table: {flag} defaults to {generated[flag]}, not {default}"
