"""The plugin loads through the `nanochat` entry point, and every hook spec has a test of its own."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pluggy

from megacontext_plugin import hookspecs
from megacontext_plugin.plugin import MegaContextPlugin, plugin


def _manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def test_entry_point_loads_the_plugin_object() -> None:
    pm = _manager()
    assert pm.load_setuptools_entrypoints(hookspecs.PROJECT, name="megacontext") == 1
    loaded = pm.get_plugin("megacontext")
    assert loaded is plugin and isinstance(loaded, MegaContextPlugin)
    pm.check_pending()  # no misspelled hook implementation


def test_register_arguments_hook_adds_the_mc_flags() -> None:
    pm = _manager()
    pm.register(plugin, name="megacontext")
    try:
        parser = argparse.ArgumentParser()
        pm.hook.register_arguments(parser=parser)
        ns = parser.parse_args(["--mc", "--mc-tree", "disk", "--block_size", "8"])
        assert (ns.mc, ns.mc_tree, ns.block_size) == (True, "disk", 8)
    finally:
        pm.unregister(plugin)


def test_every_hook_spec_has_a_test_of_its_own() -> None:
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if getattr(fn, hookspecs.PROJECT + "_spec", None) is not None]
    assert specs, "no hook specs found"
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    missing = [name for name in specs if f"def test_{name}_hook" not in tests]
    assert not missing, f"hook specs without a test named test_<hook>_hook...: {missing}"
