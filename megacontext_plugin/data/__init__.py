"""Offline, seeded long-context data: task generators, metrics and a parquet corpus writer.

Submodules: :mod:`.tasks` (passkey, associative recall, copy segments), :mod:`.metrics`
(exact / per-digit / per-position accuracy, depth x length grids) and :mod:`.corpus`
(nanochat-style ``shard_NNNNN.parquet`` shards; pyarrow is imported lazily).
"""
