"""A nanochat run's checkpoint for ``megacontext eval long-context --checkpoint DIR``.

``DIR`` is one of a run's checkpoint directories (``$NANOCHAT_BASE_DIR/{base,mid,chatsft}_checkpoints/TAG``,
holding ``model_{step:06d}.pt``). The model is built by nanochat's own ``checkpoint_manager.build_model``
(so nanochat must be importable: ``NANOCHAT_DIR``, or run inside the tree) and must be the patched
``GPT`` (the arms call ``GPT.forward_embeds``); the tokenizer is the run's, from ``DIR/../../tokenizer``
when it is there (nanochat's layout), else nanochat's base directory's.

With ``--mc`` the run saved ``megacontext_{step}.pt`` beside the model: its GistNet, LensNet and the
knobs they were trained with are restored, as the chat scripts do, and every arm runs. A run trained
without ``--mc`` has no aux nets: the arms that need them (``uniform``, ``mc``) would measure
untrained networks, so only ``truncation`` and ``full`` (vanilla attention at the same budget, and
the whole document where it fits the window) run, the vanilla side of an MC-vs-vanilla comparison.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, read_state, state_path
from ..config import MCConfig, config_from_saved
from ..nets import AuxNets
from .nanochat_model import NanochatArms, validation_budget

NEEDS_AUX_NETS = ("uniform", "mc")
MODEL_FILE = re.compile(r"model_(\d+)\.pt")


@dataclass
class NanochatRun:
    """What the arms need from a nanochat checkpoint."""

    model: NanochatArms
    tokenizer: Any
    nets: AuxNets
    trained_with_mc: bool
    """False: no ``megacontext_{step}.pt`` (a vanilla run); ``nets`` are untrained, at the default knobs."""
    step: int
    recipe: dict[str, Any]

    @property
    def budget(self) -> int:
        """The checkpoint's budget (``--mc_wc_budget``, else the final curriculum budget of a full
        window); for a vanilla run the same at the default knobs."""
        return validation_budget(self.nets)


def steps_in(checkpoint_dir: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in checkpoint_dir.iterdir() if (m := MODEL_FILE.fullmatch(p.name)))


def import_nanochat() -> tuple[Any, Any]:
    """nanochat's ``checkpoint_manager`` and ``gpt`` modules (``NANOCHAT_DIR`` first on the path)."""
    tree = os.environ.get("NANOCHAT_DIR", "")
    if tree and tree not in sys.path:
        sys.path.insert(0, tree)
    try:
        from nanochat import checkpoint_manager, gpt
    except ImportError as e:
        where = f"NANOCHAT_DIR={tree}" if tree else "NANOCHAT_DIR is not set"
        raise CheckpointError(f"a nanochat checkpoint needs nanochat importable ({where}; {type(e).__name__}: {e}): "
                              f"set NANOCHAT_DIR to the patched nanochat tree") from None
    if not hasattr(gpt.GPT, "forward_embeds"):
        raise CheckpointError(f"{Path(gpt.__file__).parent.parent} is not patched (GPT.forward_embeds is missing): "
                              f"run `megacontext nanochat apply` on it")
    return checkpoint_manager, gpt


@contextlib.contextmanager
def _run_base_dir(checkpoint_dir: Path) -> Iterator[None]:
    """nanochat reads its tokenizer from ``$NANOCHAT_BASE_DIR/tokenizer``: point it at the run's own."""
    base = checkpoint_dir.resolve().parent.parent
    if not (base / "tokenizer").is_dir():
        yield
        return
    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NANOCHAT_BASE_DIR", None)
        else:
            os.environ["NANOCHAT_BASE_DIR"] = old


def load(checkpoint_dir: Path, step: int | None = None, device: str | None = None) -> NanochatRun:
    """The run's model at ``step`` (default: the last), its tokenizer and its aux nets, in eval mode."""
    steps = steps_in(checkpoint_dir)
    if not steps:
        raise CheckpointError(f"{checkpoint_dir} holds no nanochat checkpoint (model_NNNNNN.pt): expected a "
                              f"directory such as $NANOCHAT_BASE_DIR/base_checkpoints/d20, or a tiny .pt file")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointError(f"--step {step}: {checkpoint_dir} has steps {', '.join(map(str, steps))}")
    checkpoint_manager, _ = import_nanochat()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        with _run_base_dir(checkpoint_dir):
            gpt, tokenizer, meta = checkpoint_manager.build_model(str(checkpoint_dir), step, dev, phase="eval")
    except (OSError, AssertionError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"{checkpoint_dir} step {step}: nanochat could not load it "
                              f"({type(e).__name__}: {first})") from None
    cfg = gpt.config
    mc_state = state_path(checkpoint_dir, step)
    trained_with_mc = mc_state.is_file()
    mc_cfg = MCConfig(mc=True)
    if trained_with_mc:
        saved = read_state(mc_state, what="MegaContext state (megacontext_{step}.pt)")
        try:
            mc_cfg = config_from_saved(saved["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{mc_state}: not MegaContext state ({e})") from None
    nets = AuxNets.build(mc_cfg, dim=cfg.n_embd, sequence_len=cfg.sequence_len, device=dev)
    if trained_with_mc:
        nets.load_nets(saved["controller"])
    nets.eval()
    recipe = {"nanochat_step": step, "model_config": meta.get("model_config"),
              "megacontext_state": str(mc_state) if trained_with_mc else None}
    return NanochatRun(NanochatArms(gpt), tokenizer, nets, trained_with_mc, step, recipe)
