"""Helpers of the inference tests: a tiny model and controller built identically in every process, a
fake tokenizer and engine, a session's logits recomputed without its KV cache, and (run as a script)
the child process of the SIGKILL test.

    python tests/inference_support.py TREE_DIR SESSION PROMPT_LEN

opens the named disk session, decodes greedily through ``InferenceRuntime.generate`` and prints
``token ID NUM_TOKENS`` for every column it receives, until it is killed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import ClassVar

import torch

from megacontext_plugin.config import MCConfig, parse_config
from megacontext_plugin.context import EntryRows, rotary_tables
from megacontext_plugin.context.positions import rope_base
from megacontext_plugin.inference import MCSession
from megacontext_plugin.nets import activation_dtype
from megacontext_plugin.nets.tiny_gpt import TinyGPT, TinyGPTConfig
from megacontext_plugin.training import MCController

T = 128
VOCAB = 64
FLAGS = ["--mc", "--block_size", "8", "--allocator_recent_tokens", "16", "--mc_horizon", "8", "--gistnet_heads", "2",
         "--gistnet_layers", "1", "--lensnet_dim", "32", "--lensnet_heads", "2", "--lensnet_layers", "1",
         "--mc_refocus_every", "8"]


def record_lens_levels(lensnet: torch.nn.Module) -> list[int]:
    """Patch ``lensnet.forward`` to record the highest entry level of every call; returns the record."""
    seen: list[int] = []
    forward = lensnet.forward

    def recording_forward(entries, levels, spans, tail, mask=None):  # type: ignore[no-untyped-def]
        seen.append(int(levels.max()))
        return forward(entries, levels, spans, tail, mask)

    lensnet.forward = recording_forward  # type: ignore[method-assign]
    return seen


def build(extra: Sequence[str] = (), seed: int = 0) -> tuple[TinyGPT, MCController, MCConfig]:
    """TinyGPT (attention that matters: its zero-initialised projections are randomised) and the aux nets."""
    cfg = parse_config([*FLAGS, *extra])
    torch.manual_seed(seed)
    model = TinyGPT(TinyGPTConfig(vocab_size=VOCAB, sequence_len=T, n_layer=2, n_head=4, n_embd=64)).eval()
    with torch.no_grad():
        for block in model.blocks:
            torch.nn.init.normal_(block.proj.weight, std=0.3)
            torch.nn.init.normal_(block.fc_out.weight, std=0.1)
    controller = MCController(cfg, dim=64, head_dim=16, sequence_len=T, total_steps=1)
    return model, controller, cfg


def sharpen_lensnet(controller: MCController, scale: float = 4.0) -> None:
    """Scores well past the allocator's thresholds, so refocuses expand and collapse."""
    lens = controller.lensnet
    with torch.no_grad():
        torch.nn.init.normal_(lens.score.weight, std=scale / lens.hidden**0.5)


@torch.inference_mode()
def full_recompute_logits(session: MCSession) -> torch.Tensor:
    """Next-token logits ``[V]`` of the session's current WC computed from scratch, without its KV cache: the
    reference the cached path (``CachedForward.logits``) must match. One forward of every entry, at the
    positions the session's settings give them (the model's own rotary table where they are ordinal)."""
    wc, model, s = session.wc, session.model, session.settings
    assert wc is not None
    mcfg = model.config
    W = len(wc)
    tables = rotary_tables(EntryRows.of([wc]), s.position_scheme, s.rope_gist_sigma, mcfg.n_embd // mcfg.n_head,
                           mcfg.sequence_len, activation_dtype(session.device), session.device, rope_base(model))
    cos, sin = (model.cos[:, :W], model.sin[:, :W]) if tables is None else (tables[0][:, :W], tables[1][:, :W])
    logits = model.forward_embeds(session.entries.x_CD[:W][None], session.entries.vid_C[:W][None], None, cos, sin)
    return logits[0, -1, :mcfg.vocab_size].float()


def prompt(length: int, seed: int = 1) -> list[int]:
    return torch.randint(8, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


class FakeTokenizer:
    """nanochat's tokenizer surface; special tokens lie outside the tiny vocabulary so a random model
    never ends a row by chance."""

    SPECIALS: ClassVar[dict[str, int]] = {
        "<|bos|>": 1000, "<|user_start|>": 1001, "<|user_end|>": 1002, "<|assistant_start|>": 1003,
        "<|assistant_end|>": 1004, "<|python_start|>": 1005, "<|python_end|>": 1006, "<|output_start|>": 1007,
        "<|output_end|>": 1008,
    }

    def encode_special(self, name: str) -> int:
        return self.SPECIALS[name]

    def get_bos_token_id(self) -> int:
        return self.SPECIALS["<|bos|>"]

    def encode(self, text: str) -> list[int]:
        return [8 + int(c) for c in text if c.isdigit()]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(str(i - 8) if 8 <= i < 18 else {20: "+", 21: "*"}.get(i, "?") for i in ids)


class FakeEngine:
    def __init__(self, model: torch.nn.Module, tokenizer: object | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer or FakeTokenizer()


def _child(tree_dir: str, name: str, prompt_len: int) -> None:
    from megacontext_plugin.inference import InferenceRuntime

    model, controller, _ = build(["--mc_tree", "disk", "--mc_tree_dir", tree_dir, "--mc_session", name])
    runtime = InferenceRuntime(controller.nets)
    stream = runtime.generate(FakeEngine(model), prompt(prompt_len), max_tokens=100_000, temperature=0.0)
    assert stream is not None
    session = runtime.named[name]
    for column, _ in stream:
        print(f"token {column[0]} {session.num_tokens}", flush=True)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
