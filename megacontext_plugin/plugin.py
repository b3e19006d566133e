"""The MegaContext plugin object registered under the ``nanochat`` entry-point group.

Hook implementations wire config -> controller (training). With ``--mc`` absent every hook
returns None, False or nothing, so the host runs exactly as upstream.

Stages (``hookspecs``): base_train anneals the working-context budget over its run (the
curriculum); mid, sft and chat continue at the final budget. The aux nets' state travels with
the model: saved beside every checkpoint, picked up by the next stage from the checkpoint it
starts from, and restored exactly on ``--resume-from-step``.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from megacontext_plugin import hookspecs as _hookspecs
from megacontext_plugin.config import ConfigError, MCConfig, config_from_args, explicit_knobs, is_checkpoint_knob
from megacontext_plugin.config import register_arguments as _register_config_arguments
from megacontext_plugin.evaluation.postrun import post_run_validation
from megacontext_plugin.hookspecs import ForwardOverride, hookimpl
from megacontext_plugin.inference import InferenceRuntime, SessionError
from megacontext_plugin.telemetry import TelemetryConfigError, TelemetryEvent, TelemetryProvider, make_run_provider
from megacontext_plugin.training import MCBatch, MCController
from megacontext_plugin.training.curriculum import auto_batch
from megacontext_plugin.training.monitor import TrainingMonitor
from megacontext_plugin.training.packing import align_right

STRUCTURAL_PREFIXES = ("block_size", "gistnet_", "lensnet_")
"""Knobs that shape the aux nets' parameters: a later stage must use the values its checkpoint was trained with."""


def _model_dims(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(n_embd, head_dim, sequence_len)`` of a nanochat ``GPT`` (or a model with the same config)."""
    cfg = model.config
    return cfg.n_embd, cfg.n_embd // cfg.n_head, cfg.sequence_len


def _fail(message: str) -> NoReturn:
    """A user mistake: one line on stderr and exit status 2, never a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit`` (>= 1): a smaller device batch that still
    divides the host's total batch, so its gradient-accumulation arithmetic stays exact."""
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, limit))


def _full_context_nll(model: torch.nn.Module, idx_BT: torch.Tensor):
    """The teacher's pass (``training.guided``): the patched GPT's per-token NLL over the whole
    sequence ``idx[B, T]``, on given LOD0 embeddings, with its own rotary table and value embeddings."""

    def nll_fn(emb_BTD: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
        T = emb_BTD.size(1)
        return model.forward_embeds(emb_BTD, idx_BT, y_BT, model.cos[:, :T], model.sin[:, :T]).view_as(y_BT)

    return nll_fn


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
        self.stage = ""
        self.anneal = True
        self.source: tuple[str, int] | None = None
        """The checkpoint the host loaded before ``setup_model`` (the next stage's starting point)."""
        self._last: dict[str, torch.Tensor | float] = {}
        self._last_at = -1
        """``controller.steps_done`` when ``_last`` was computed (the optimizer step it belongs to)."""
        self.monitor: TrainingMonitor | None = None
        """Telemetry, MFU and alerts of a training stage (None without --mc, and in chat)."""
        self.inference: InferenceRuntime | None = None
        """MC decoding for the Engine's ``generate`` (sessions, listeners, the level map); see ``inference``."""
        self.chat_provider: TelemetryProvider | None = None
        """Where the chat stage's ``inference_update`` events go (``--mc_telemetry``)."""

    def reset(self) -> None:
        """Forget the run (tests, or a host that trains twice in one process)."""
        if self.controller is not None:
            self.controller.close()
        self._close_monitor()
        if self.inference is not None:
            self.inference.close()
            self.inference = None
        self._close_chat_provider()
        self.cfg, self.controller, self.step, self._last, self._last_at = None, None, 0, {}, -1
        self.stage, self.anneal, self.source = "", True, None

    @property
    def budget_step(self) -> int:
        """The step the curriculum reads: base_train's own; later stages sit at the final budget."""
        assert self.controller is not None
        return self.step if self.anneal else self.controller.total_steps

    @hookimpl
    def register_arguments(self, parser: argparse.ArgumentParser) -> None:
        _register_config_arguments(parser)

    @hookimpl
    def adjust_arguments(self, args: argparse.Namespace, stage: str) -> None:
        if not getattr(args, "mc", False):
            return
        self.stage = stage
        try:
            cfg = config_from_args(args)
            sequence_len = getattr(args, "max_seq_len", None)
            if sequence_len is not None:
                cfg.validate_for_model(sequence_len)
        except ConfigError as e:
            _fail(str(e))
        self.cfg = cfg
        if stage in ("base", "mid") and sequence_len is not None and cfg.mc_auto_batch:
            plan = auto_batch(cfg, args.device_batch_size, 1000, sequence_len)
            batch = _largest_divisor_at_most(args.device_batch_size, plan.device_batch_size)
            if batch != args.device_batch_size:
                print(f"megacontext: auto-batch: --device-batch-size {args.device_batch_size} -> {batch} "
                      f"(a step feeds the base model {plan.peak_multiplier:.2f}x vanilla's positions at the "
                      f"widest budget; --mc_auto_batch 0 keeps yours)")
                args.device_batch_size = batch

    @hookimpl
    def plan_iterations(self, args: argparse.Namespace, num_iterations: int) -> int | None:
        if self.cfg is None or not getattr(args, "mc", False) or not self.cfg.mc_auto_batch:
            return None
        plan = auto_batch(self.cfg, 1, num_iterations, args.max_seq_len)
        if plan.num_iterations != num_iterations:
            print(f"megacontext: auto-batch: {num_iterations} -> {plan.num_iterations} iterations (MC processes "
                  f"{plan.mean_multiplier:.2f}x vanilla's base-model positions per sequence on average; "
                  f"--mc_auto_batch 0 keeps yours)")
        return plan.num_iterations

    @hookimpl
    def setup_model(self, model: torch.nn.Module, args: argparse.Namespace, num_iterations: int,
                    stage: str) -> bool:
        if not getattr(args, "mc", False):
            return False
        dim, head_dim, sequence_len = _model_dims(model)
        device = next(model.parameters()).device
        self.stage, self.anneal = stage, stage == "base"
        try:
            self.cfg = config_from_args(args)
            if self.source is not None:
                self.cfg = self._restore_settings(self.cfg, explicit_knobs(args), *self.source)
            self.controller = MCController(self.cfg, dim=dim, head_dim=head_dim, sequence_len=sequence_len,
                                           total_steps=max(1, num_iterations), device=device)
        except ConfigError as e:
            _fail(str(e))
        if self.source is not None:
            self._load_source(*self.source)
        if stage in ("base", "mid", "sft"):
            self._start_monitor(model, stage)
        elif stage == "chat":  # check the inference knobs now and open a named session (clear errors before the prompt)
            self._inference_runtime(model)
        return True

    def _inference_runtime(self, model: torch.nn.Module | None = None) -> InferenceRuntime:
        assert self.controller is not None
        if self.inference is None or self.inference.controller is not self.controller:
            if self.inference is not None:
                self.inference.close()
            try:
                self.inference = InferenceRuntime(self.controller)
                self._send_inference_updates(self.inference)
                if model is not None and self.inference.cfg.mc_session:
                    session = self.inference.open_named(model, self.inference.cfg.mc_session)
                    where = f"disk, {session.path}" if session.path is not None else "ram"
                    print(f"megacontext: session {session.name!r} ({where}): {session.num_tokens} tokens of history")
            except (ConfigError, SessionError) as e:
                _fail(str(e))
        return self.inference

    def _start_monitor(self, model: torch.nn.Module, stage: str) -> None:
        assert self.controller is not None
        self._close_monitor()
        try:
            self.monitor, where = TrainingMonitor.for_run(self.controller, model, stage)
        except TelemetryConfigError as e:
            _fail(f"--mc_telemetry otlp: {e}")
        atexit.register(self.monitor.close)  # bounded: never waits on a hanging collector
        if self.monitor.main:
            print(f"megacontext: telemetry -> {where}")

    def _send_inference_updates(self, runtime: InferenceRuntime) -> None:
        """Every refocus's ``inference_update`` goes to the run's provider (``--mc_telemetry``,
        service ``megacontext-chat``); ``none`` sends nothing."""
        cfg = runtime.cfg
        if cfg.mc_telemetry == "none":
            return
        try:
            provider, _, where = make_run_provider(cfg.mc_telemetry, "chat", telemetry_dir=cfg.mc_telemetry_dir or None)
        except TelemetryConfigError as e:
            _fail(f"--mc_telemetry {cfg.mc_telemetry}: {e}")
        self._close_chat_provider()
        self.chat_provider = provider
        atexit.register(provider.close)  # bounded: never waits on a hanging collector
        runtime.listeners.append(lambda payload: provider.emit(TelemetryEvent("inference_update", payload)))
        print(f"megacontext: inference telemetry -> {where}")

    def _close_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            atexit.unregister(self.monitor.close)
            self.monitor = None

    def _close_chat_provider(self) -> None:
        provider = self.chat_provider
        if provider is not None:
            provider.close()
            atexit.unregister(provider.close)
            self.chat_provider = None

    def _restore_settings(self, cfg: MCConfig, explicit: set[str], checkpoint_dir: str, step: int) -> MCConfig:
        """The knobs the starting checkpoint's aux nets were trained with (``is_checkpoint_knob``), as
        nanochat rebuilds its model from the checkpoint's meta: ``--mc`` alone is enough. A flag given
        explicitly that contradicts one is a one-line error naming both values; other knobs stay free."""
        path = self.state_path(checkpoint_dir, step)
        if not path.is_file():
            return cfg
        saved = self._read_state(path)["config"]
        current = cfg.as_dict()
        differ = {k: saved[k] for k in current if is_checkpoint_knob(k) and k in saved and saved[k] != current[k]}
        explicit = explicit & set(differ)
        if explicit:
            was = ", ".join(f"--{k} {saved[k]}" for k in sorted(explicit))
            now = ", ".join(f"--{k} {current[k]}" for k in sorted(explicit))
            _fail(f"{path} was trained with {was} but this run asks for {now}: drop the flag (the checkpoint's "
                  f"value is used) or start from a checkpoint trained with it")
        if differ:
            print("megacontext: from " + path.name + ": " + ", ".join(f"--{k} {v}" for k, v in differ.items()))
        return dataclasses.replace(cfg, **differ)

    def _read_state(self, path: Path) -> dict[str, Any]:
        """``megacontext_{step}.pt`` as data only (a file that would run code on load is refused)."""
        try:
            device = self.controller.device_ if self.controller is not None else "cpu"
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # not a torch file, truncated, or a pickle that is not plain data
            _fail(f"{path} cannot be read as MegaContext state: {type(e).__name__}: {str(e).splitlines()[0][:200]}")

    def _load_source(self, checkpoint_dir: str, step: int) -> None:
        """Start this stage from the aux nets saved beside the checkpoint the host loaded."""
        assert self.controller is not None
        path = self.state_path(checkpoint_dir, step)
        if not path.is_file():
            print(f"megacontext: {path.name} not found beside {checkpoint_dir} (that model was trained without "
                  f"--mc): GistNet and LensNet start fresh")
            return
        saved = self._read_state(path)
        self._check_structure(saved["config"], path)
        state = saved["controller"]
        self.controller.gistnet.load_state_dict(state["gistnet"])
        self.controller.lensnet.load_state_dict(state["lensnet"])
        self.controller.lens_prev.load_state_dict(state["lensnet"])
        print(f"megacontext: GistNet and LensNet loaded from {path}")

    def _check_structure(self, saved_cfg: dict[str, Any], path: Path) -> None:
        assert self.controller is not None
        current = self.controller.cfg.as_dict()
        differ = [k for k in current if k.startswith(STRUCTURAL_PREFIXES) and k in saved_cfg
                  and saved_cfg[k] != current[k]]
        if differ:
            was = ", ".join(f"--{k} {saved_cfg[k]}" for k in differ)
            now = ", ".join(f"--{k} {current[k]}" for k in differ)
            _fail(f"{path} was trained with {was} but this run asks for {now}: pass the values it was trained with")

    @hookimpl
    def before_forward(self, model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor | None,
                       kv_cache: Any) -> ForwardOverride | None:
        if self.controller is None or targets is None or kv_cache is not None or not model.training:
            return None  # MC trains here; evaluation and inference see the plain model
        idx, targets = align_right(idx, targets)  # SFT's right padding: its tails become supervised
        batch = self.controller.process_batch(idx, targets, _wte(model), self.budget_step,
                                              nll_fn=_full_context_nll(model, idx))
        if self.monitor is not None:  # counters every micro-batch; snapshots at the telemetry cadence
            self.monitor.on_batch(self.step, idx, _wte(model), batch, budget_step=self.budget_step)
        if batch is None:  # too short to compress (e.g. a short SFT batch): the plain forward trains it
            return None
        return ForwardOverride(batch.inputs_RWD, batch.targets_RW, batch.value_ids_RW, state=batch)

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
        if self.monitor is not None:  # mc_batch_stats and PrefDebug on telemetry cadence steps
            self.monitor.on_losses(self.step, batch, losses)
        cfg = self.controller.cfg
        self._last_at = self.controller.steps_done  # the optimizer step these metrics belong to
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
                    "config": self.controller.cfg.as_dict(),
                    "telemetry": None if self.monitor is None else self.monitor.state_dict()}, tmp)
        os.replace(tmp, path)  # a crash mid-save leaves the previous state, never a torn file

    @hookimpl
    def load_state(self, checkpoint_dir: str, step: int) -> None:
        if self.controller is None:  # load_model() before setup_model: the next stage's starting point
            self.source = (checkpoint_dir, step)
            return
        path = self.state_path(checkpoint_dir, step)
        if not path.is_file():
            _fail(f"resuming from step {step} with --mc, but {path} is missing: the checkpoint was saved "
                  f"without MegaContext (drop --mc, or resume from a step saved with it)")
        saved = self._read_state(path)
        self._check_structure(saved["config"], path)
        self.controller.load_controller_state(saved["controller"])
        self.step = saved["step"]
        if self.monitor is not None and saved.get("telemetry"):  # the fair-comparison axes continue
            self.monitor.load_state_dict(saved["telemetry"])

    @hookimpl
    def after_optimizer_step(self, step: int) -> None:
        if self.controller is None:
            return
        self.controller.step_aux()
        self.step = step + 1
        if self.monitor is not None:
            self.monitor.after_step(step, self._last)

    @hookimpl
    def on_step_telemetry(self, step: int, metrics: dict[str, float]) -> dict[str, float] | None:
        if self.controller is None or not self._last:
            return None
        # one host sync, at logging time; a step whose batches all trained plainly (too short to
        # compress) reports no loss metrics rather than an older step's
        fresh = self._last_at == self.controller.steps_done - 1
        values = {f"mc/{k}": float(v) for k, v in self._last.items()} if fresh else {}
        if self.monitor is not None:  # MFU, FLOPs, tokens, wall time, swap rate, residency, drops
            values.update(self.monitor.metrics())
        return {k: v for k, v in values.items() if not math.isnan(v)}  # a level absent from the batch: no point

    @hookimpl
    def generate(self, engine: Any, tokens: list[int], num_samples: int, max_tokens: int | None,
                 temperature: float, top_k: int | None, seed: int) -> Any:
        if self.controller is None:
            return None
        return self._inference_runtime().generate(engine, tokens, num_samples=num_samples, max_tokens=max_tokens,
                                                  temperature=temperature, top_k=top_k, seed=seed)

    @hookimpl
    def evaluate(self, model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace, source: str,
                 report: Any) -> None:
        if not getattr(args, "mc", False):
            return
        if self.controller is None:  # base_eval: the aux nets saved beside the checkpoint it loaded
            self.setup_model(model, args, 0, "eval")
        assert self.controller is not None
        post_run_validation(model, tokenizer, self.controller, source, report)


plugin = MegaContextPlugin()
