"""Inference with MegaContext: the Engine's decode over histories far longer than the model's window.

``ChatRuntime`` is what the plugin's ``generate`` hook calls (an ``InferenceRuntime``: policy and
sessions, with its telemetry and ``chat_cli``'s answer reports);
``MCSession`` is one history (tree), its working context, LensNet refocusing and a reused KV
cache; ``decode_stream`` is nanochat ``Engine.generate``'s contract over sessions;
``level_map``/``render_level_map`` show which spans the model sees raw and which as gists.
"""

from __future__ import annotations

from .chat import ChatRuntime
from .decode import SpecialTokens, decode_stream, ending_at_role_tokens, sample_next_token
from .kv_cache import MCKVCache
from .level_map import level_bar, level_map, level_runs, render_level_map
from .runtime import InferenceRuntime, default_tree_dir, wants_megacontext
from .session import (
    MCSession,
    RefocusRecord,
    SessionError,
    SessionSettings,
    SessionStats,
    first_difference,
    gistnet_version,
    make_room,
)

__all__ = [
    "ChatRuntime",
    "InferenceRuntime",
    "MCKVCache",
    "MCSession",
    "RefocusRecord",
    "SessionError",
    "SessionSettings",
    "SessionStats",
    "SpecialTokens",
    "decode_stream",
    "default_tree_dir",
    "ending_at_role_tokens",
    "first_difference",
    "gistnet_version",
    "level_bar",
    "level_map",
    "level_runs",
    "make_room",
    "render_level_map",
    "sample_next_token",
    "wants_megacontext",
]
