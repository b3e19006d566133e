"""The MegaContext plugin object registered under the ``nanochat`` entry-point group.

Each hook implementation is a few lines over the room that does the work: the knobs
(``config``), a stage's training state (``training.TrainingRun``), the state files beside the
host's checkpoints (``checkpoint``), MC decoding for the Engine (``inference.ChatRuntime``) and
the post-run validation (``evaluation``). With ``--mc`` absent every hook returns None, False or
nothing, so the host runs exactly as upstream.

Stages (``hookspecs``): base_train anneals the working-context budget over its run (the
curriculum); mid, sft and chat continue at the final budget. The aux nets' state travels with
the model: saved beside every checkpoint, picked up by the next stage from the checkpoint it
starts from, and restored exactly on ``--resume-from-step``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from megacontext_plugin import hookspecs as _hookspecs
from megacontext_plugin.arg_errors import one_line_errors
from megacontext_plugin.checkpoint import CheckpointError, read_matching, restore_settings, state_path, write_state
from megacontext_plugin.config import ConfigError, MCConfig, config_from_args, explicit_knobs
from megacontext_plugin.config import register_arguments as _register_config_arguments
from megacontext_plugin.evaluation.postrun import log_host_section, post_run_validation, report_beside
from megacontext_plugin.hookspecs import ForwardOverride, hookimpl
from megacontext_plugin.inference import ChatRuntime, InferenceRuntime, SessionError
from megacontext_plugin.inference.cli_report import host_is_chat_cli
from megacontext_plugin.inference.web import check_web_arguments, serves_web, web_char_limit
from megacontext_plugin.nets import AuxNets, model_device, model_dims
from megacontext_plugin.telemetry import TelemetryConfigError
from megacontext_plugin.training import MCBatch, MCController
from megacontext_plugin.training.curriculum import adjusted_device_batch, adjusted_iterations, mid_loader_iterations
from megacontext_plugin.training.monitor import TrainingMonitor, dist_info
from megacontext_plugin.training.run import TrainingRun


def _fail(message: str) -> NoReturn:
    """A user mistake: one line on stderr and exit status 2, never a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _say(message: str | None) -> None:
    if message:
        print(f"megacontext: {message}")


@dataclass
class _Run:
    """Everything one run of the host's script set up; ``reset`` drops it whole."""

    cfg: MCConfig | None = None
    """The knobs, parsed once (``adjust_arguments``, or ``setup_model`` for a host that skips it)."""
    source: tuple[str, int] | None = None
    """The checkpoint the host loaded before ``setup_model`` (the next stage's starting point)."""
    training: TrainingRun | None = None
    """A training (or evaluation) stage's controller, step and telemetry."""
    chat: ChatRuntime | None = None
    """MC decoding for the Engine's ``generate`` (the chat stage's, or a training stage's samples)."""
    chat_nets: AuxNets | None = field(default=None, repr=False)
    """The chat stage's aux nets, loaded from its starting checkpoint (no controller, no optimizer)."""
    optimizer_steps: int | None = None
    """The steps mid_train was asked for where its loader's count was converted (``mid_loader_iterations``):
    the training run counts optimizer steps (the alerts' warm-up), not micro-batches."""

    def close(self) -> None:
        if self.training is not None:
            self.training.close()
        if self.chat is not None:
            self.chat.close()


class MegaContextPlugin:
    """pluggy plugin: one instance per process (module attribute :data:`plugin`)."""

    hookspecs = _hookspecs
    """The contract, handed to the host (``nanochat.common.get_plugin_hooks`` adds it)."""

    def __init__(self) -> None:
        self.run = _Run()

    def reset(self) -> None:
        """Forget the run (tests, or a host that trains twice in one process)."""
        self.run.close()
        self.run = _Run()

    # ---- the run's state the product reads: nets (generate), inference (the chat evaluation; a user's listeners,
    # docs/reference.md), training, controller and monitor (benchmarks/throughput.py) -----------------------------
    @property
    def training(self) -> TrainingRun | None:
        return self.run.training

    @property
    def controller(self) -> MCController | None:
        return None if self.run.training is None else self.run.training.controller

    @property
    def monitor(self) -> TrainingMonitor | None:
        return None if self.run.training is None else self.run.training.monitor

    @property
    def nets(self) -> AuxNets | None:
        """The aux nets in use: the chat stage's, or the training controller's."""
        return self.run.chat_nets if self.run.training is None else self.run.training.controller.nets

    @property
    def inference(self) -> InferenceRuntime | None:
        return None if self.run.chat is None else self.run.chat.runtime

    # ---- arguments ----------------------------------------------------------------------------
    @hookimpl
    def register_arguments(self, parser: argparse.ArgumentParser) -> None:
        before = set(parser._option_string_actions)
        _register_config_arguments(parser)
        one_line_errors(parser, own=set(parser._option_string_actions) - before)

    @hookimpl
    def adjust_arguments(self, args: argparse.Namespace, stage: str) -> None:
        if not getattr(args, "mc", False):
            return
        sequence_len = getattr(args, "max_seq_len", None)
        try:
            cfg = config_from_args(args)
            if sequence_len is not None:
                cfg.validate_for_model(sequence_len)
            if stage == "chat" and serves_web(args):
                check_web_arguments(cfg, args)
        except ConfigError as e:
            _fail(str(e))
        self.run.cfg = cfg
        if stage in ("base", "mid") and sequence_len is not None and cfg.mc_auto_batch:
            requested = args.device_batch_size
            args.device_batch_size, message = adjusted_device_batch(cfg, requested, sequence_len)
            _say(message)
            if stage == "mid" and hasattr(args, "num_iterations"):
                steps = args.num_iterations
                args.num_iterations, message = mid_loader_iterations(steps, requested, args.device_batch_size)
                self.run.optimizer_steps = steps if message else None
                _say(message)

    @hookimpl
    def plan_iterations(self, args: argparse.Namespace, num_iterations: int) -> int | None:
        cfg = self.run.cfg
        if cfg is None or not getattr(args, "mc", False) or not cfg.mc_auto_batch:
            return None
        iterations, message = adjusted_iterations(cfg, num_iterations, args.max_seq_len)
        _say(message)
        return iterations

    # ---- stages -------------------------------------------------------------------------------
    @hookimpl
    def setup_model(self, model: torch.nn.Module, args: argparse.Namespace, num_iterations: int,
                    stage: str) -> bool:
        if not getattr(args, "mc", False):
            return False
        run = self.run
        cfg = self._stage_config(args)
        try:
            if run.training is not None:
                run.training.close()
                run.training = None
            if stage == "chat":  # the inference knobs and a named session fail here, before the first prompt
                run.chat_nets = self._load_chat_nets(cfg, model)
                self._open_chat(run.chat_nets, model, answer_reports=host_is_chat_cli(), web=serves_web(args))
                return True
            run.training = TrainingRun(cfg, model, num_iterations=run.optimizer_steps or num_iterations, stage=stage)
            self._start_from_source(run.training)
            if stage in ("base", "mid", "sft"):
                _say(f"telemetry -> {where}" if (where := run.training.start_monitor(model, stage)) else None)
        except (ConfigError, SessionError, CheckpointError) as e:
            _fail(str(e))
        except TelemetryConfigError as e:
            _fail(f"--mc_telemetry {cfg.mc_telemetry if stage == 'chat' else 'otlp'}: {e}")
        return True

    def _stage_config(self, args: argparse.Namespace) -> MCConfig:
        """The knobs parsed by ``adjust_arguments`` (or now), with those the starting checkpoint's aux
        nets were trained with (``checkpoint.restore_settings``)."""
        try:
            cfg = self.run.cfg if self.run.cfg is not None else config_from_args(args)
            if self.run.source is not None:
                cfg, taken = restore_settings(cfg, explicit_knobs(args), state_path(*self.run.source))
                if taken:
                    _say(f"from {state_path(*self.run.source).name}: "
                         + ", ".join(f"--{k} {v}" for k, v in taken.items()))
        except (ConfigError, CheckpointError) as e:
            _fail(str(e))
        self.run.cfg = cfg
        return cfg

    def _source_state(self, cfg: MCConfig, device: torch.device) -> dict[str, Any] | None:
        """The state saved beside the checkpoint this stage starts from (None: none, said once)."""
        if self.run.source is None:
            return None
        checkpoint_dir, step = self.run.source
        path = state_path(checkpoint_dir, step)
        saved = read_matching(path, cfg, device)
        if saved is None:
            _say(f"{path.name} not found beside {checkpoint_dir} (that model was trained without --mc): "
                 f"GistNet and LensNet start fresh")
        else:
            _say(f"GistNet and LensNet loaded from {path}")
        return saved

    def _start_from_source(self, training: TrainingRun) -> None:
        controller = training.controller
        saved = self._source_state(controller.cfg, controller.device)
        if saved is not None:
            training.start_from(saved)

    def _load_chat_nets(self, cfg: MCConfig, model: torch.nn.Module) -> AuxNets:
        dim, _, sequence_len = model_dims(model)
        nets = AuxNets.build(cfg, dim=dim, sequence_len=sequence_len, device=model_device(model))
        saved = self._source_state(nets.cfg, nets.device)
        if saved is not None:
            nets.load_nets(saved["controller"])
        return nets

    def _open_chat(self, nets: AuxNets, model: torch.nn.Module | None = None, answer_reports: bool = False,
                   web: bool = False) -> None:
        if self.run.chat is not None:
            self.run.chat.close()
            self.run.chat = None
        self.run.chat = ChatRuntime(nets, model, answer_reports=answer_reports, web=web)
        for message in self.run.chat.messages:
            _say(message)

    # ---- training -----------------------------------------------------------------------------
    @hookimpl
    def before_forward(self, model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor | None,
                       kv_cache: Any) -> ForwardOverride | None:
        training = self.run.training
        if training is None or targets is None or kv_cache is not None or not model.training:
            return None  # MC trains here; evaluation and inference see the plain model
        batch = training.forward_batch(model, idx, targets)
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
        if self.run.training is None or not isinstance(override.state, MCBatch):
            return {}
        return self.run.training.aux_losses(override.state, per_entry_loss)

    @hookimpl
    def after_optimizer_step(self, step: int) -> None:
        if self.run.training is not None:
            self.run.training.after_optimizer_step(step)

    @hookimpl
    def on_step_telemetry(self, step: int, metrics: dict[str, float]) -> dict[str, float] | None:
        return None if self.run.training is None else self.run.training.step_metrics()

    # ---- checkpoints --------------------------------------------------------------------------
    @hookimpl
    def save_state(self, checkpoint_dir: str, step: int, rank: int) -> None:
        if self.run.training is None or rank != 0:
            return
        write_state(state_path(checkpoint_dir, step), self.run.training.state())

    @hookimpl
    def load_state(self, checkpoint_dir: str, step: int) -> None:
        training = self.run.training
        if training is None:  # load_model() before setup_model: the next stage's starting point
            self.run.source = (checkpoint_dir, step)
            return
        path = state_path(checkpoint_dir, step)
        try:
            saved = read_matching(path, training.controller.cfg, training.controller.device)
        except CheckpointError as e:
            _fail(str(e))
        if saved is None and step <= training.plain_steps:  # the plain phase saves no MegaContext state
            _say(f"resuming at step {step}, within --mc_plain_steps {training.plain_steps}: GistNet and LensNet "
                 f"start fresh")
            training.step = step
            return
        if saved is None:
            _fail(f"resuming from step {step} with --mc, but {path} is missing: the checkpoint was saved "
                  f"without MegaContext (drop --mc, or resume from a step saved with it)")
        training.resume(saved)

    # ---- inference and evaluation -------------------------------------------------------------
    @hookimpl
    def generate(self, engine: Any, tokens: list[int], num_samples: int, max_tokens: int | None,
                 temperature: float, top_k: int | None, seed: int) -> Any:
        nets = self.nets
        if nets is None:
            return None
        if self.run.chat is None or self.run.chat.nets is not nets:  # a training stage's samples
            try:
                self._open_chat(nets)
            except (ConfigError, SessionError) as e:
                _fail(str(e))
            except TelemetryConfigError as e:
                _fail(f"--mc_telemetry {nets.cfg.mc_telemetry}: {e}")
        assert self.run.chat is not None
        return self.run.chat.generate(engine, tokens, num_samples=num_samples, max_tokens=max_tokens,
                                      temperature=temperature, top_k=top_k, seed=seed)

    @hookimpl
    def chat_limits(self, message_chars: int, conversation_chars: int) -> tuple[int, int] | None:
        nets = self.run.chat_nets
        if self.run.chat is None or nets is None:
            return None
        limit, why = web_char_limit(nets.cfg, nets.gistnet.dim, conversation_chars)
        _say(f"chat_web accepts conversations, and messages, of up to {limit:,} characters ({why})")
        return limit, limit

    @hookimpl
    def evaluate(self, model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace, source: str,
                 report: Any) -> None:
        if not getattr(args, "mc", False):
            return
        if self.run.training is None:  # base_eval: the aux nets saved beside the checkpoint it loaded
            self.setup_model(model, args, 0, "eval")
        assert self.run.training is not None
        if report is None and self.run.source is not None and dist_info()[0] == 0:
            # nanochat without a report (master): the plugin's own, beside the checkpoints the script loaded
            report = report_beside(self.run.source[0])
            log_host_section(report, source, {"checkpoint": f"{self.run.source[0]} step {self.run.source[1]}",
                             "upstream's numbers": "printed by the script (this nanochat writes no report)"})
        post_run_validation(model, tokenizer, self.run.training.controller.nets, source, report)


plugin = MegaContextPlugin()
