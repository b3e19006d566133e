"""The base model a benchmark measures: nanochat's own ``GPT`` through a patched tree when
``NANOCHAT_DIR`` is set, else the stand-in ``TinyGPT``; both behind one small interface.

nanochat: ``NANOCHAT_DIR`` (a pristine tree at a supported commit) is copied once per process into
a temporary directory, patched there (``nanochat_patch.apply``, as the tests do) and imported from
it; the model has nanochat's shapes (``base_train``'s: width ``64 * depth`` rounded up to head_dim
128, one head per 128 channels, value embeddings, untied head) at the given vocabulary, window
pattern ``L`` (``base_train`` recommends it without FlashAttention-3: SDPA has no sliding window,
and a masked window would slow vanilla's full-length rows, not MC's shorter ones), initialised by
``init_weights`` with the output projections given a little signal (nanochat zero-inits them).
The stand-in keeps its nanochat-like shapes (width ``64 * depth``, head_dim 64).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from megacontext_plugin.nets import model_wte
from megacontext_plugin.training.mfu import base_flops_fn

NANOCHAT = "nanochat"
STAND_IN = "stand-in"
NANOCHAT_HEAD_DIM = 128
STAND_IN_HEAD_DIM = 64
NANOCHAT_VOCAB = 65536

_TREE: Path | None = None


def model_kind() -> str:
    """``nanochat`` when ``NANOCHAT_DIR`` is set (the benchmarks then run nanochat's own GPT), else ``stand-in``."""
    return NANOCHAT if os.environ.get("NANOCHAT_DIR") else STAND_IN


def patched_tree() -> Path:
    """A patched copy of ``NANOCHAT_DIR`` on ``sys.path``, made once per process and removed at exit."""
    global _TREE
    if _TREE is None:
        from megacontext_plugin import nanochat_patch

        source = Path(os.environ["NANOCHAT_DIR"])
        root = Path(tempfile.mkdtemp(prefix="mc-bench-nanochat-"))
        atexit.register(shutil.rmtree, root, True)
        tree = root / "nanochat"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv"))
        nanochat_patch.apply(tree)
        sys.path.insert(0, str(tree))
        os.environ.setdefault("NANOCHAT_PLUGINS", "none")  # the benchmark drives the plugin itself
        _TREE = tree
    return _TREE


@dataclass
class BenchModel:
    """A base model and what a benchmark reads of it."""

    model: nn.Module
    kind: str
    depth: int
    vocab: int
    width: int
    head_dim: int

    @property
    def wte(self) -> nn.Embedding:
        return model_wte(self.model)

    @property
    def flops_per_token(self) -> Callable[[int], int]:
        """``context -> forward+backward FLOPs per token`` (the plugin's own count, ``mfu.base_flops_fn``)."""
        return base_flops_fn(self.model)

    def loss(self, x_BT: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
        """Vanilla training loss (mean NLL) of ``x[B, T]`` against ``y[B, T]``."""
        return self.model(x_BT, y_BT)

    def nll(self, inputs_RWD: torch.Tensor, value_ids_RW: torch.Tensor, targets_RW: torch.Tensor,
            cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Per-entry NLL ``[R, W]`` of packed inputs, as the patched forward computes it for the plugin."""
        W = inputs_RWD.shape[1]
        cos, sin = cos_sin if cos_sin is not None else (self.model.cos[:, :W], self.model.sin[:, :W])
        return self.model.forward_embeds(inputs_RWD, value_ids_RW, targets_RW, cos, sin).view_as(targets_RW)

    def describe(self) -> dict[str, Any]:
        return {"model": self.kind, "depth": self.depth, "vocab": self.vocab, "width": self.width,
                "head_dim": self.head_dim}


def build_model(depth: int, T: int, seed: int, *, vocab: int | None = None, kind: str | None = None,
                device: torch.device | str = "cpu") -> BenchModel:
    """The benchmark's base model of ``depth`` layers and ``sequence_len = T`` (``kind`` default: ``model_kind()``;
    ``vocab`` default: 65,536 for nanochat, 8,192 for the stand-in)."""
    kind = kind or model_kind()
    torch.manual_seed(seed)
    if kind == NANOCHAT:
        patched_tree()
        from nanochat.gpt import GPT, GPTConfig

        vocab = vocab or NANOCHAT_VOCAB
        width = -(-64 * depth // NANOCHAT_HEAD_DIM) * NANOCHAT_HEAD_DIM
        heads = width // NANOCHAT_HEAD_DIM
        cfg = GPTConfig(sequence_len=T, vocab_size=vocab, n_layer=depth, n_head=heads, n_kv_head=heads,
                        n_embd=width, window_pattern="L")
        with torch.device("meta"):
            model = GPT(cfg)
        model.to_empty(device=device)
        model.init_weights()
        with torch.no_grad():
            for block in model.transformer.h:
                torch.nn.init.normal_(block.attn.c_proj.weight, std=0.02)
                torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.02)
        return BenchModel(model, kind, depth, vocab, width, NANOCHAT_HEAD_DIM)
    from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig

    vocab = vocab or 8192
    width = STAND_IN_HEAD_DIM * depth
    tiny = TinyGPT(TinyGPTConfig(vocab_size=vocab, sequence_len=T, n_layer=depth, n_head=depth, n_embd=width))
    with torch.no_grad():  # nanochat zero-inits the output projections; give them a little signal
        for block in tiny.blocks:
            torch.nn.init.normal_(block.proj.weight, std=0.02)
            torch.nn.init.normal_(block.fc_out.weight, std=0.02)
    return BenchModel(tiny.to(device), kind, depth, vocab, width, STAND_IN_HEAD_DIM)
