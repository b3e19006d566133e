"""megacontext-plugin: long-context memory at constant compute for nanochat."""

__version__ = "0.1.0"
