"""The plugin's state beside nanochat's checkpoints: ``megacontext_{step:06d}.pt``.

One file per saved step, beside the host's ``model_{step:06d}.pt``: the controller's state
(``MCController.controller_state``: GistNet, LensNet, their optimizer and EMAs), the step, the
knobs it was trained with and the telemetry's running axes. It is written atomically and read as
data only. Three readers share :func:`read_state`: the knobs a later stage inherits
(:func:`restore_settings`), the aux nets a later stage starts from, and an exact resume; it is also
the one loader of the evaluation's files (a nanochat run's state, the tiny checkpoint, train-tiny's
``plain.pt``), and :class:`CheckpointError` the one error a file the plugin cannot use raises.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from .config import MCConfig, is_checkpoint_knob
from .private_files import make_private_dirs, private_binary_file, replacement_mode

STRUCTURAL_PREFIXES = ("block_size", "gistnet_", "lensnet_")
"""Knobs that shape the aux nets' parameters: a later stage must use the values its checkpoint was trained with."""


class CheckpointError(ValueError):
    """A state file (or a checkpoint directory) that cannot be used as asked: one line that says why
    and what to do."""


def state_path(checkpoint_dir: str | Path, step: int) -> Path:
    """Where the plugin's state for ``step`` lives, beside nanochat's ``model_{step:06d}.pt``."""
    return Path(checkpoint_dir) / f"megacontext_{step:06d}.pt"


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` so that a crash mid-save leaves the previous file, never a torn one. The aux nets
    learnt from the training conversations: a new file is owner-only, a replaced one keeps its mode."""
    make_private_dirs(path.parent)
    tmp = path.with_suffix(".pt.tmp")
    tmp.unlink(missing_ok=True)  # a leftover would keep its own mode
    with private_binary_file(tmp, "wb", replacement_mode(path)) as f:
        torch.save(state, f)
    os.replace(tmp, path)


def read_state(path: str | Path, device: torch.device | str = "cpu", what: str = "MegaContext state"
               ) -> dict[str, Any]:
    """The ``torch.save``'d dict at ``path`` as data only (``weights_only=True``: tensors, numbers,
    strings, containers; a file that would run code on load is refused), or a ``CheckpointError``
    naming ``path`` and ``what`` it should have been."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (expected {what})")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # not a torch file, truncated, or a pickle that is not plain data
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"{path} cannot be read as {what}: {type(e).__name__}: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} cannot be read as {what}: it holds a {type(state).__name__}, not a dict")
    return state


def read_matching(path: Path, cfg: MCConfig, device: torch.device | str) -> dict[str, Any] | None:
    """The state at ``path`` (None if there is none) after checking that its aux nets have the shape
    ``cfg`` asks for (``STRUCTURAL_PREFIXES``): the one loader of a stage's start and of a resume."""
    if not path.is_file():
        return None
    saved = read_state(path, device)
    current = cfg.as_dict()
    differ = [k for k in current if k.startswith(STRUCTURAL_PREFIXES) and k in saved["config"]
              and saved["config"][k] != current[k]]
    if differ:
        was = ", ".join(f"--{k} {saved['config'][k]}" for k in differ)
        now = ", ".join(f"--{k} {current[k]}" for k in differ)
        raise CheckpointError(f"{path} was trained with {was} but this run asks for {now}: pass the values it "
                              f"was trained with")
    return saved


def restore_settings(cfg: MCConfig, explicit: set[str], path: Path) -> tuple[MCConfig, dict[str, Any]]:
    """``cfg`` with the knobs the checkpoint at ``path`` was trained with (``is_checkpoint_knob``), as
    nanochat rebuilds its model from the checkpoint's meta: ``--mc`` alone is enough. Returns the new
    config and the knobs taken from the file. A flag in ``explicit`` that contradicts one is a
    ``CheckpointError`` naming both values; other knobs stay free."""
    if not path.is_file():
        return cfg, {}
    saved = read_state(path)["config"]
    current = cfg.as_dict()
    differ = {k: saved[k] for k in current if is_checkpoint_knob(k) and k in saved and saved[k] != current[k]}
    explicit = explicit & set(differ)
    if explicit:
        was = ", ".join(f"--{k} {saved[k]}" for k in sorted(explicit))
        now = ", ".join(f"--{k} {current[k]}" for k in sorted(explicit))
        raise CheckpointError(f"{path} was trained with {was} but this run asks for {now}: drop the flag (the "
                              f"checkpoint's value is used) or start from a checkpoint trained with it")
    return dataclasses.replace(cfg, **differ), differ
