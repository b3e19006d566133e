"""The chat arm's answers: nanochat's own ``Engine``, greedy, opened as ``chat_cli --mc`` opens it.

:meth:`ChatEngine.open_megacontext` makes the same calls on the plugin that ``chat_cli --mc`` makes (the
host's plugin loading, ``register_arguments``, ``adjust_arguments``, ``load_state``,
``setup_model(stage="chat")``, then ``GPT.attach_plugin``), so the ``mc`` arm's answers come from the
plugin's ``generate`` hook: its ``ChatRuntime``, an unnamed session per conversation, and upstream's own
decode for a prompt whose answer fits the budget, exactly as in a chat. The flags are those the run was
trained with (from ``megacontext_{step}.pt``) with ``--mc_wc_budget W``, a tree in RAM and no telemetry
(:func:`chat_cli_flags`).

The other arms run the same ``Engine`` with the plugin detached (upstream's decode): ``truncation`` on
BOS and the last tokens of the conversation that leave room for the answer in ``W`` (vanilla attention
at the budget; a cut inside a message starts with that message's role token), ``full`` on the whole
conversation (the caller runs it only where it fits the model's window).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from ..config import MCConfig, knob_fields
from .arms import covering_gists
from .chat_conversations import ChatTokens

CHAT_ARMS = ("truncation", "mc", "full")
ANSWER_TOKENS = 24
"""Generated tokens at most per answer (the replies the SFT data teaches take at most about 14)."""

EVALUATION_FLAGS = {"mc_telemetry": "none", "mc_session": "", "mc_tree": "ram"}
"""What the evaluation sets whatever the run trained with: no telemetry files, unnamed sessions, no tree on disk."""


def chat_cli_flags(trained: MCConfig, budget: int, overrides: dict[str, Any] | None = None) -> list[str]:
    """``chat_cli --mc`` flags that decode with the knobs ``trained`` (the run's), ``overrides`` on top,
    at budget ``--mc_wc_budget budget``: every knob that differs from its default, spelled out."""
    values = trained.as_dict() | (overrides or {}) | EVALUATION_FLAGS | {"mc_wc_budget": budget}
    default = MCConfig()
    flags = ["--mc"]
    for f in knob_fields():
        value = values[f.name]
        if f.name != "mc" and value != getattr(default, f.name):
            flags += [f"--{f.name}", str(int(value) if isinstance(value, bool) else value)]
    return flags


def truncated(ids: Sequence[int], keep: int, chat: ChatTokens) -> list[int]:
    """BOS and the last tokens of ``ids`` (a rendered conversation), at most ``keep`` tokens in all, as
    whole a conversation as the cut allows: a cut inside a message starts with that message's role
    token, a cut on a message's end token drops it."""
    if len(ids) <= keep:
        return list(ids)
    cut = len(ids) - keep + 1
    first = ids[cut]
    if chat.is_start(first):
        return [chat.bos, *ids[cut:]]
    if chat.is_end(first):
        return [chat.bos, *ids[cut + 1:]]
    role = next(t for t in reversed(ids[:cut]) if chat.is_start(t))
    return [chat.bos, role, *ids[cut + 1:]]


class ChatEngine:
    """Greedy answers of nanochat's ``Engine`` for the chat arms (see the module docstring)."""

    def __init__(self, gpt: torch.nn.Module, tokenizer: Any, budget: int, max_tokens: int = ANSWER_TOKENS) -> None:
        from nanochat.engine import Engine  # importable once nanochat_checkpoint.load found the tree

        self.gpt, self.tokenizer, self.budget, self.max_tokens = gpt, tokenizer, budget, max_tokens
        self.chat = ChatTokens.of(tokenizer)
        self.engine = Engine(gpt, tokenizer)
        self.hooks: Any = None
        self._plugin: Any = None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    @property
    def settings(self) -> Any:
        """The MC sessions' settings (``inference.SessionSettings``, after :meth:`open_megacontext`)."""
        assert self._plugin is not None and self._plugin.inference is not None, "open_megacontext first"
        return self._plugin.inference.settings

    def open_megacontext(self, checkpoint_dir: Path, step: int, flags: Sequence[str]) -> None:
        """The plugin on this model, as ``chat_cli --mc FLAGS`` sets it up: loaded by the host's own plugin
        loading (``nanochat.common.get_plugin_hooks``, the ``nanochat`` entry point), then the same hook
        calls. A bad flag or a budget the sessions cannot use ends the program with one line (the
        plugin's own exit 2)."""
        from nanochat.common import get_plugin_hooks  # the patched tree's plugin host

        hooks = get_plugin_hooks()
        plugin = next((ep.load() for ep in entry_points(group="nanochat") if ep.name == "megacontext"), None)
        if hooks is None or plugin is None:
            raise SystemExit("megacontext eval long-context: error: --chat: the megacontext plugin is not loaded by "
                             "nanochat (installed as its entry point, and NANOCHAT_PLUGINS unset or naming it)")
        self._plugin = plugin
        parser = argparse.ArgumentParser(prog="chat_cli")
        hooks.register_arguments(parser=parser)
        args = parser.parse_args(list(flags))
        hooks.adjust_arguments(args=args, stage="chat")
        hooks.load_state(checkpoint_dir=str(checkpoint_dir), step=step)
        if not any(hooks.setup_model(model=self.gpt, args=args, num_iterations=0, stage="chat")):
            raise RuntimeError("the plugin did not take the model (setup_model returned False)")
        self.gpt.attach_plugin(hooks)  # type: ignore[operator]
        self.hooks = hooks

    def answer(self, arm: str, ids: Sequence[int]) -> tuple[list[int], bool]:
        """The answer's tokens (without the token that ended it) to the rendered conversation ``ids``, and
        whether a MegaContext session decoded it (else upstream's decode did)."""
        if arm == "mc":
            assert self._plugin is not None and self._plugin.inference is not None, "open_megacontext first"
            before = self._plugin.inference.last_session
            out = self._generate(list(ids))
            return out, self._plugin.inference.last_session is not before  # a new session per conversation
        with self._plugin_detached():
            if arm == "truncation":
                return self._generate(truncated(ids, self.budget - self.max_tokens, self.chat)), False
            if arm == "full":
                return self._generate(list(ids)), False
        raise ValueError(f"unknown chat arm {arm!r}; expected one of {CHAT_ARMS}")

    def fact_raw(self, span: tuple[int, int]) -> bool:
        """Whether the last MegaContext session's working context holds the tokens ``span = [lo, hi)`` of its
        history raw (no gist covers any of them)."""
        assert self._plugin is not None and self._plugin.inference is not None, "open_megacontext first"
        session = self._plugin.inference.last_session
        assert session is not None and session.wc is not None, "no MegaContext session answered yet"
        return covering_gists(session.wc, span).size == 0

    def _generate(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        device = next(self.gpt.parameters()).device
        autocast = (torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else contextlib.nullcontext())  # as chat_cli
        with autocast:
            for column, _ in self.engine.generate(ids, num_samples=1, max_tokens=self.max_tokens, temperature=0.0):
                token = int(column[0])
                if token in (self.chat.assistant_end, self.chat.bos):
                    break
                out.append(token)
        return out

    @contextlib.contextmanager
    def _plugin_detached(self) -> Iterator[None]:
        """Upstream's decode: the patch's ``GPT`` asks no plugin while ``_plugin_hooks`` is None."""
        hooks = getattr(self.gpt, "_plugin_hooks", None)
        self.gpt._plugin_hooks = None
        try:
            yield
        finally:
            self.gpt._plugin_hooks = hooks

    def close(self) -> None:
        if self._plugin is not None:
            self._plugin.reset()
            self._plugin = None
        self.gpt._plugin_hooks = None
        self.hooks = None
