"""The hook contract between nanochat and its plugins (pluggy project name ``nanochat``).

Specs are empty functions; their docstrings are the API documentation. Calls use keywords.
This module grows with the integration work (``before_forward``, ``positional_overrides``,
``extra_loss``, ``on_step_telemetry`` and the lifecycle hooks); every spec here has a test.
"""

from __future__ import annotations

import argparse

import pluggy

PROJECT = "nanochat"
"""pluggy project name and entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the plugin's command-line flags to a nanochat script's ``parser``.

    Called once per script, before ``parser.parse_args()``. Flags must not collide with
    upstream's; MegaContext adds ``--mc`` and its knobs (see ``megacontext config --help``).
    """
