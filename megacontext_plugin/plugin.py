"""The MegaContext plugin object registered under the ``nanochat`` entry-point group.

Hook implementations wire config -> controller (training). With ``--mc`` absent every hook
returns None or nothing, so the host runs exactly as upstream. Telemetry, checkpoints and the
Engine are wired by later work.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from megacontext_plugin import hookspecs as _hookspecs
from megacontext_plugin.config import ConfigError, MCConfig, config_from_args
from megacontext_plugin.config import register_arguments as _register_config_arguments
from megacontext_plugin.hookspecs import ForwardOverride, hookimpl
from megacontext_plugin.training import MCBatch, MCController
from megacontext_plugin.training.packing import pack_targets


def _model_dims(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(n_embd, head_dim, sequence_len)`` of a nanochat ``GPT`` (or a model with the same config)."""
    cfg = model.config
    return cfg.n_embd, cfg.n_embd // cfg.n_head, cfg.sequence_len


def _wte(model: torch.nn.Module) -> torch.nn.Module:
    """The token embedding: nanochat keeps it at ``transformer.wte``."""
    transformer = getattr(model, "transformer", None)
    return transformer["wte"] if transformer is not None else model.wte


class MegaContextPlugin:
    """pluggy plugin: one instance per process (module attribute :data:`plugin`)."""

    hookspecs = _hookspecs
    """The contract, handed to the host (``nanochat.common.get_plugin_hooks`` adds it)."""

    def __init__(self) -> None:
        self.cfg: MCConfig | None = None
        self.controller: MCController | None = None
        self.step = 0
        self._last: dict[str, torch.Tensor | float] = {}

    def reset(self) -> None:
        """Forget the run (tests, or a host that trains twice in one process)."""
        if self.controller is not None:
            self.controller.close()
        self.cfg, self.controller, self.step, self._last = None, None, 0, {}

    @hookimpl
    def register_arguments(self, parser: argparse.ArgumentParser) -> None:
        _register_config_arguments(parser)

    @hookimpl
    def setup_model(self, model: torch.nn.Module, args: argparse.Namespace, num_iterations: int) -> None:
        if not getattr(args, "mc", False):
            return
        dim, head_dim, sequence_len = _model_dims(model)
        device = next(model.parameters()).device
        try:
            self.cfg = config_from_args(args)
            self.controller = MCController(self.cfg, dim=dim, head_dim=head_dim, sequence_len=sequence_len,
                                           total_steps=num_iterations, device=device)
        except ConfigError as e:  # a user mistake: one line and exit status 2, never a traceback
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    @hookimpl
    def before_forward(self, model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor | None,
                       kv_cache: Any) -> ForwardOverride | None:
        if self.controller is None or targets is None or kv_cache is not None or not model.training:
            return None  # MC trains here; evaluation and inference see the plain model
        batch = self.controller.process_batch(idx, targets, _wte(model), self.step)
        # a raw entry at token t has end - 1 == t, so the target gather applied to idx yields its own id
        value_ids = torch.where(batch.index.levels_RW == 0, pack_targets(idx, batch.index),
                                torch.full_like(batch.targets_RW, -1))
        return ForwardOverride(batch.inputs_RWD, batch.targets_RW, value_ids, state=batch)

    @hookimpl
    def positional_overrides(self, model: torch.nn.Module,
                             override: ForwardOverride) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not isinstance(override.state, MCBatch):
            return None
        return override.state.cos_sin

    @hookimpl
    def extra_loss(self, model: torch.nn.Module, override: ForwardOverride,
                   per_entry_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = override.state
        if self.controller is None or not isinstance(batch, MCBatch):
            return {}
        losses = self.controller.compute_losses(batch, per_entry_loss.view_as(batch.targets_RW))
        cfg = self.controller.cfg
        self._last = dict(losses.metrics) | {
            "time_controller_ms": batch.timings_ms.get("controller_ms", 0.0) + batch.timings_ms.get("losses_ms", 0.0)
        }
        return {
            "mc_gist": cfg.mc_gist_loss_weight * losses.terms["gist_loss"],
            "mc_lens": cfg.mc_lens_loss_weight * losses.terms["lens_loss"],
        }

    @staticmethod
    def state_path(checkpoint_dir: str | Path, step: int) -> Path:
        """Where the plugin's state for ``step`` lives, beside nanochat's ``model_{step:06d}.pt``."""
        return Path(checkpoint_dir) / f"megacontext_{step:06d}.pt"

    @hookimpl
    def save_state(self, checkpoint_dir: str, step: int, rank: int) -> None:
        if self.controller is None or rank != 0:
            return
        path = self.state_path(checkpoint_dir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"controller": self.controller.controller_state(), "step": self.step,
                    "config": self.controller.cfg.as_dict()}, tmp)
        os.replace(tmp, path)  # a crash mid-save leaves the previous state, never a torn file

    @hookimpl
    def load_state(self, checkpoint_dir: str, step: int) -> None:
        if self.controller is None:
            return
        path = self.state_path(checkpoint_dir, step)
        if not path.is_file():  # a user mistake: one line and exit status 2, never a traceback
            print(f"error: resuming from step {step} with --mc, but {path} is missing: the checkpoint was saved "
                  f"without MegaContext (drop --mc, or resume from a step saved with it)", file=sys.stderr)
            raise SystemExit(2)
        saved = torch.load(path, map_location=self.controller.device_)
        self.controller.load_controller_state(saved["controller"])
        self.step = saved["step"]

    @hookimpl
    def after_optimizer_step(self, step: int) -> None:
        if self.controller is None:
            return
        self.controller.step_aux()
        self.step = step + 1

    @hookimpl
    def on_step_telemetry(self, step: int, metrics: dict[str, float]) -> dict[str, float] | None:
        if self.controller is None or not self._last:
            return None
        values = {f"mc/{k}": float(v) for k, v in self._last.items()}  # one host sync, at logging time
        return {k: v for k, v in values.items() if not math.isnan(v)}  # a level absent from the batch: no point


plugin = MegaContextPlugin()
