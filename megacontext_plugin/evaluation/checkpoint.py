"""The tiny evaluation checkpoint: a byte-level TinyGPT and the MCController's aux nets in one file.

Format (``torch.save`` of a dict): ``format`` = :data:`FORMAT`, ``model_config`` (TinyGPTConfig
fields), ``model`` (state dict), ``mc_config`` (MCConfig fields), ``controller``
(``MCController.controller_state()``), ``recipe`` (what trained it: free-form).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_state
from ..config import MCConfig, config_from_saved
from ..training.controller import MCController
from ..training.reference_model import TinyGPT, TinyGPTConfig

FORMAT = "megacontext-eval-tiny/1"


def encode(text: str) -> torch.Tensor:
    """Byte-level tokens (the tasks' text is ASCII): vocab 256."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids: Any) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def build(model_config: TinyGPTConfig, cfg: MCConfig, total_steps: int = 1) -> tuple[TinyGPT, MCController]:
    model = TinyGPT(model_config)
    ctrl = MCController(cfg, dim=model_config.n_embd, head_dim=model_config.n_embd // model_config.n_head,
                        sequence_len=model_config.sequence_len, total_steps=total_steps)
    return model, ctrl


def save(path: str | Path, model: TinyGPT, ctrl: MCController, recipe: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                "mc_config": ctrl.cfg.as_dict(), "controller": ctrl.controller_state(), "recipe": recipe}, path)


def load(path: str | Path) -> tuple[TinyGPT, MCController, dict[str, Any]]:
    state = read_state(path, what=f"a {FORMAT} checkpoint")  # CheckpointError: a ValueError
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (write one with `megacontext eval train-tiny`)")
    try:
        model, ctrl = build(TinyGPTConfig(**state["model_config"]), config_from_saved(state["mc_config"]))
    except (KeyError, TypeError, ValueError) as e:  # ConfigError is a ValueError: a knob out of range or unknown
        raise ValueError(f"{path}: not a usable {FORMAT} checkpoint ({e}); train one with "
                         "`megacontext eval train-tiny`") from None
    model.load_state_dict(state["model"])
    ctrl.load_controller_state(state["controller"])
    model.eval()
    ctrl.eval()
    ctrl.close()  # no layout prefetching at evaluation time
    return model, ctrl, state.get("recipe", {})
