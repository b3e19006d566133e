"""The hook contract between nanochat and its plugins (pluggy project name ``nanochat``).

Specs are empty functions; their docstrings are the API documentation. Calls use keywords.
The host (patched nanochat) guards every call with a plain attribute check, so with no plugin
active nothing runs and nothing changes. Every spec here has a test of its own
(``tests/test_plugin.py`` checks that).

The host's scripts name their ``stage``: ``"base"`` (base_train), ``"mid"`` (mid_train),
``"sft"`` (chat_sft), ``"chat"`` (chat_cli, chat_web, chat_eval) or ``"eval"`` (base_eval). Order of calls, as the
patched scripts make them::

    register_arguments(parser)                       # once, before parse_args
    adjust_arguments(args, stage)                    # once, right after parse_args
    load_state(checkpoint_dir, step)                 # mid/sft/chat: load_model() read a checkpoint
    plan_iterations(args, num_iterations)            # base: once the horizon is known
    setup_model(model, args, num_iterations, stage)  # once; True = drive this model's forward
    chat_limits(message_chars, conversation_chars)   # chat_web: once its worker is set up
    load_state(checkpoint_dir, step)                 # base, on --resume-from-step
    for each micro-batch (training):
        ov = before_forward(model, idx, targets, kv_cache)      # inside GPT.forward
        if ov: cos_sin = positional_overrides(model, override=ov)
               loss = masked mean of per-entry NLL + sum(extra_loss(model, override=ov, per_entry_loss=...))
    after_optimizer_step(step)                       # after the base optimizers stepped
    on_step_telemetry(step, metrics)                 # before the host logs the step
    save_state(checkpoint_dir, step, rank)           # right after the host saved a checkpoint
    generate(engine, tokens, ...)                    # chat: first thing in Engine.generate
    evaluate(model, tokenizer, args, source, report) # base_eval / chat_eval: after the host's own results

``GPT.forward`` calls the forward hooks only on a model a plugin asked for (``setup_model``
returned True, so the script called ``GPT.attach_plugin``): with no plugin active, or a plugin
installed but switched off (``--mc`` absent), the forward, and its compiled graph, are upstream's.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
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
def adjust_arguments(args: argparse.Namespace, stage: str) -> None:
    """Right after ``parse_args``, before any heavy work (data, model, compile).

    A plugin rejects bad flag combinations here (one clear line, exit status 2) and may adjust
    ``args`` in place (MegaContext's auto-batch divides ``--device-batch-size``).
    """


@hookspec(firstresult=True)
def plan_iterations(args: argparse.Namespace, num_iterations: int) -> int | None:
    """base_train knows its horizon: return an adjusted number of iterations, or None to keep it."""


@hookspec
def setup_model(model: torch.nn.Module, args: argparse.Namespace, num_iterations: int, stage: str) -> bool:
    """The model exists (weights initialised or loaded). ``num_iterations`` <= 0: unknown (an
    epoch-driven stage, or chat).

    A plugin validates its flags against the model and builds its own modules and optimizer here;
    nothing is added to the model's parameters. Return True to have the script hand this model's
    forward to the hooks (``GPT.attach_plugin``; the script then trains the eager model and only
    ``GPT.forward_embeds`` is compiled), False otherwise.
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
    """The host read ``step`` of ``checkpoint_dir``: restore the plugin's state saved beside it.

    After ``setup_model`` (base_train's ``--resume-from-step``) the state must exist: fail with a
    clear error if it is missing. Before it (``load_model`` in mid/sft/chat) the checkpoint is
    the starting point of the next stage: the plugin loads it in ``setup_model`` if it is there.
    """


@hookspec
def after_optimizer_step(step: int) -> None:
    """The base model's optimizers have stepped for ``step``; a plugin steps its own here."""


@hookspec
def on_step_telemetry(step: int, metrics: dict[str, float]) -> dict[str, float] | None:
    """Before the host logs ``step``: return metrics to merge into its log (W&B keys, e.g. ``mc/...``).

    ``metrics`` is what the host is about to log (read-only for the plugin).
    """


@hookspec(firstresult=True)
def generate(engine: Any, tokens: list[int], num_samples: int, max_tokens: int | None, temperature: float,
             top_k: int | None, seed: int) -> Iterator[tuple[list[int], list[int]]] | None:
    """First thing in ``Engine.generate`` (on a model a plugin drives): return an iterator of
    ``(token_column, token_masks)`` exactly as ``Engine.generate`` yields them to decode this
    prompt yourself, or None to let the Engine decode it."""


@hookspec(firstresult=True)
def chat_limits(message_chars: int, conversation_chars: int) -> tuple[int, int] | None:
    """``chat_web``, once its worker is set up: return ``(message_chars, conversation_chars)``, the
    characters a message and a whole conversation may hold, to replace the host's own limits (given
    here), or None to keep them."""


@hookspec
def evaluate(model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace, source: str, report: Any) -> None:
    """End of ``base_eval`` (``source`` ``"base"``) and ``chat_eval`` (``source`` = its ``-i``: ``"mid"``,
    ``"sft"``, ...), after the host printed and logged its own results: run the plugin's evaluation
    of ``model`` with the run's ``tokenizer``, print it, and add it to nanochat's report
    (``nanochat.report.Report``, ``report.report_dir`` on rank 0): MegaContext appends to the
    section the script has just logged, so the report needs no change of its own.
    ``chat_eval`` called ``setup_model`` before; ``base_eval`` did not (only ``adjust_arguments``)."""
