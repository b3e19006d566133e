"""The MegaContext plugin object registered under the ``nanochat`` entry-point group.

Hook implementations wire config -> controller -> telemetry. Today it registers the flags;
the training, inference and telemetry hooks are added by the integration work.
"""

from __future__ import annotations

import argparse

from megacontext_plugin.config import register_arguments as _register_config_arguments
from megacontext_plugin.hookspecs import hookimpl


class MegaContextPlugin:
    """pluggy plugin: one instance per process (module attribute :data:`plugin`)."""

    @hookimpl
    def register_arguments(self, parser: argparse.ArgumentParser) -> None:
        _register_config_arguments(parser)


plugin = MegaContextPlugin()
