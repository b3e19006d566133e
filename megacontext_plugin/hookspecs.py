"""The hook contract between nanochat and its plugins (pluggy project name ``nanochat``).

Specs are empty functions; their docstrings are the API documentation. Calls use keywords.
The host (patched nanochat) guards every call with a plain attribute check, so with no plugin
active nothing runs and nothing changes. Every spec here has a test of its own
(``tests/test_plugin.py`` checks that).

Order of calls in a training step, as the host makes them::

    register_arguments(parser)                       # once, before parse_args
    setup_model(model, args, num_iterations)         # once, after the model exists, before compile
    for each micro-batch:
        ov = before_forward(model, idx, targets, kv_cache)      # inside GPT.forward
        if ov: cos_sin = positional_overrides(model, override=ov)
               loss = masked mean of per-entry NLL + sum(extra_loss(model, override=ov, per_entry_loss=...))
    after_optimizer_step(step)                       # after the base optimizers stepped
    on_step_telemetry(step, metrics)                 # before the host logs the step
    save_state(checkpoint_dir, step, rank)           # right after the host saved a checkpoint
    load_state(checkpoint_dir, step)                 # on resume, after setup_model
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import pluggy
import torch

PROJECT = "nanochat"
"""pluggy project name and entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass
class ForwardOverride:
    """What ``before_forward`` returns: the base model runs on these instead of ``idx``.

    ``R`` rows may exceed the batch (one row per working-context variant).
    """

    inputs_embeds: torch.Tensor
    """``[R, W, D]`` input embeddings (replacing ``wte(idx)``), the model's dtype."""
    targets: torch.Tensor
    """``[R, W]`` next-token targets, -1 = ignored."""
    value_ids: torch.Tensor
    """``[R, W]`` token id whose value embedding an entry uses; -1 = none (gists and padding get a
    zero value embedding: they stand for many tokens, so no single token's value fits)."""
    state: Any = None
    """Opaque to the host; handed back to the plugin's other hooks."""


@hookspec
def register_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the plugin's command-line flags to a nanochat script's ``parser``.

    Called once per script, before ``parser.parse_args()``. Flags must not collide with
    upstream's; MegaContext adds ``--mc`` and its knobs (see ``megacontext config --help``).
    """


@hookspec
def setup_model(model: torch.nn.Module, args: argparse.Namespace, num_iterations: int) -> None:
    """The base model exists (weights initialised or loaded), before ``torch.compile``.

    A plugin validates its flags against the model (clear error before any heavy work) and
    builds its own modules and optimizer here; nothing is added to the model's parameters.
    """


@hookspec(firstresult=True)
def before_forward(
    model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor | None, kv_cache: Any
) -> ForwardOverride | None:
    """Called first thing in ``GPT.forward``. Return a :class:`ForwardOverride` to replace the
    inputs, or None to leave the forward untouched (the first non-None answer wins)."""


@hookspec(firstresult=True)
def positional_overrides(model: torch.nn.Module, override: ForwardOverride) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row rotary ``(cos, sin)``, each ``[R, W, 1, head_dim/2]``, for an overridden forward;
    None = the model's own table for positions ``0..W-1``."""


@hookspec
def extra_loss(
    model: torch.nn.Module, override: ForwardOverride, per_entry_loss: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Named auxiliary losses to add to the training loss of an overridden forward.

    ``per_entry_loss`` is the NLL of every entry ``[R * W]`` (0 where the target is -1). The
    host adds every returned tensor to the masked mean of ``per_entry_loss``; names are for logs.
    """


@hookspec
def save_state(checkpoint_dir: str, step: int, rank: int) -> None:
    """The host has just saved its checkpoint for ``step`` in ``checkpoint_dir``: save the plugin's
    state beside it (atomically; rank 0 only where the state is replicated)."""


@hookspec
def load_state(checkpoint_dir: str, step: int) -> None:
    """The host resumes from ``step`` of ``checkpoint_dir`` (after ``setup_model``): restore the
    plugin's state saved beside it, or fail with a clear error if it is missing."""


@hookspec
def after_optimizer_step(step: int) -> None:
    """The base model's optimizers have stepped for ``step``; a plugin steps its own here."""


@hookspec
def on_step_telemetry(step: int, metrics: dict[str, float]) -> dict[str, float] | None:
    """Before the host logs ``step``: return metrics to merge into its log (W&B keys, e.g. ``mc/...``).

    ``metrics`` is what the host is about to log (read-only for the plugin).
    """
