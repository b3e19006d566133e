"""Our flags never collide with the flags of upstream nanochat's scripts (needs NANOCHAT_DIR)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from megacontext_plugin.config import flag_names, knob_fields, register_arguments

pytestmark = pytest.mark.integration


def _upstream_flags(script: Path) -> set[str]:
    flags: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                    flags.add(arg.value)
    return flags


def test_mc_flags_do_not_collide_with_upstream_script_flags(nanochat_dir: Path) -> None:
    ours = {name for f in knob_fields() for name in flag_names(f)}
    scripts = sorted((nanochat_dir / "scripts").glob("*.py"))
    assert scripts, "no scripts/*.py under NANOCHAT_DIR"
    for script in scripts:
        theirs = _upstream_flags(script)
        assert not ours & theirs, f"{script.name} already defines {sorted(ours & theirs)}"
        # and registering ours on a parser holding theirs raises no argparse conflict
        parser = argparse.ArgumentParser()
        for flag in sorted(theirs):
            parser.add_argument(flag)
        register_arguments(parser)
