"""The tiny checkpoint: a byte-level ``TinyGPT`` and its aux nets in one file.

Format (``torch.save`` of a dict): ``format`` = :data:`FORMAT`, ``model_config`` (TinyGPTConfig
fields), ``model`` (state dict), ``mc_config`` (MCConfig fields), ``controller``
(``MCController.controller_state()``: the recipe trains with the controller), ``recipe`` (what
trained it: free-form). Training's recipe (``training.tiny_recipe``, ``megacontext eval train-tiny``)
writes it and the evaluation reads it, so both sides of the format live here, below both rooms.
:func:`load` gives the model and ``nets.AuxNets``: the evaluation holds no controller.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_state
from ..config import MCConfig, config_from_saved
from .aux import AuxNets
from .tiny_gpt import TinyGPT, TinyGPTConfig

FORMAT = "megacontext-eval-tiny/1"


def save(path: str | Path, model: TinyGPT, cfg: MCConfig, controller_state: dict[str, Any],
         recipe: dict[str, Any]) -> None:
    """Write the file: ``cfg`` and ``controller_state`` are the training controller's (``MCController.cfg``,
    ``controller_state()``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                "mc_config": cfg.as_dict(), "controller": controller_state, "recipe": recipe}, path)


def load(path: str | Path) -> tuple[TinyGPT, AuxNets, dict[str, Any]]:
    """The model and its aux nets in eval mode, and the recipe."""
    state = read_state(path, what=f"a {FORMAT} checkpoint")  # CheckpointError: a ValueError
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (write one with `megacontext eval train-tiny`)")
    try:
        model_config = TinyGPTConfig(**state["model_config"])
        model = TinyGPT(model_config)
        nets = AuxNets.build(config_from_saved(state["mc_config"]), dim=model_config.n_embd,
                             sequence_len=model_config.sequence_len)
    except (KeyError, TypeError, ValueError) as e:  # ConfigError is a ValueError: a knob out of range or unknown
        raise ValueError(f"{path}: not a usable {FORMAT} checkpoint ({e}); train one with "
                         "`megacontext eval train-tiny`") from None
    model.load_state_dict(state["model"])
    nets.load_nets(state["controller"])
    model.eval()
    nets.eval()
    return model, nets, state.get("recipe", {})
