"""The four arms of the long-context evaluation, each at a fixed working-context budget ``W``.

Every arm answers one question: given a history ``prefix`` (token ids) and a continuation
``cont`` (ids), what does the base model predict for each token of ``cont`` (teacher forcing)?
The model sees at most ``W`` entries: a view of the prefix built by the arm (at most
``W - (len(cont) - 1)`` entries), then ``cont[:-1]`` raw. The last prefix entry is always the
last prefix token raw, so its output predicts ``cont[0]``.

- ``truncation``: the last prefix tokens that fit, raw (what vanilla attention does at ``W``).
- ``uniform``: the protected tail raw, the older history as gists of one level, the finest level
  whose tiling fits (no focus; room it cannot use stays empty).
- ``mc``: MegaContext: GistNet's tree of the prefix, the coarsest working context
  (``focus.start_layout``; or the recency one), then the focus allocator refocusing it with
  LensNet's scores against the last ``H`` prefix tokens (``--mc_horizon``; gists coarser than
  LensNet trained on scored through their descendants, ``focus.lens_view``) for ``rounds``
  refocus calls. LensNet never sees ``cont`` (no leak of the
  answer into what is expanded).
- ``full``: every prefix token raw (only where ``len(prefix) + len(cont) - 1`` fits the model's
  ``sequence_len``; the upper bound).

Positions follow the nets' ``--mc_position_scheme`` (and gist damping) exactly as training
packs them. All of it runs under ``torch.no_grad`` on batch size one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..context import EntryRows, LevelTable, lens_utilities, model_inputs
from ..context.positions import rope_base
from ..context.working_context import WorkingContext
from ..focus import (
    PROMPT_ROUNDS,
    FocusAllocator,
    fitted_tail,
    focus_config,
    residency,
    score_through_view,
    start_layout,
    trained_level,
)
from ..nets import AuxNets
from ..tree.building import build_levels
from ..tree.protocol import max_tree_level

ARMS = ("truncation", "uniform", "mc", "full")


@dataclass
class Prediction:
    """Per-token NLL and argmax of the continuation, plus what the arm did."""

    nll: np.ndarray
    argmax: np.ndarray
    entries: int
    """Entries the model attended to (prefix view + ``len(cont) - 1``)."""
    info: dict[str, float] = field(default_factory=dict)


class ArmRunner:
    """Runs one arm on (prefix, cont) pairs. ``model`` is a TinyGPT-like module (``wte``,
    ``forward(inputs_embeds=..., cos_sin=...)``, ``config.sequence_len``; nanochat's GPT through
    ``evaluation.nanochat_model.NanochatArms``); ``nets`` GistNet, LensNet and their knobs
    (``nets.AuxNets``: a training controller's ``MCController.nets``, or a checkpoint's) for the
    ``uniform`` and ``mc`` arms."""

    def __init__(self, model: nn.Module, nets: AuxNets | None, budget: int, *, rounds: int = PROMPT_ROUNDS,
                 start: str = "coarsest") -> None:
        self.model, self.nets, self.budget, self.rounds, self.start = model, nets, budget, rounds, start
        self.lens_level = None if nets is None else trained_level(
            nets.sequence_len, nets.cfg.mc_horizon, nets.cfg.block_size, nets.prompt_recent)
        """The coarsest gist level LensNet trained on (``focus.trained_level``), as the controller's."""
        if start not in ("recency", "coarsest"):
            raise ValueError(f"start must be recency or coarsest, got {start!r}")
        self.seq_len = int(model.config.sequence_len)
        if budget > self.seq_len:
            raise ValueError(f"budget {budget} exceeds the model's sequence_len {self.seq_len}")

    # ---- the arm's view of the prefix -----------------------------------------------------------
    def fits_full(self, n_prefix: int, n_cont: int) -> bool:
        return n_prefix + n_cont - 1 <= self.seq_len

    @torch.no_grad()
    def predict(self, arm: str, prefix: torch.Tensor, cont: torch.Tensor,
                answer_span: tuple[int, int] | None = None) -> Prediction:
        """``answer_span``: the prefix tokens ``[lo, hi)`` that hold the answer (evaluation only, never
        shown to LensNet or the allocator); the ``mc`` arm then also reports whether they ended raw
        (``key_raw``) and whether the budget could hold them raw at all (``key_raw_reachable``)."""
        n, c = int(prefix.numel()), int(cont.numel())
        room = self.budget - (c - 1)
        info: dict[str, float] = {}
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
        if arm == "full" and not self.fits_full(n, c):
            raise ValueError(f"full attention needs {n + c - 1} <= sequence_len {self.seq_len}")
        if arm == "truncation":
            keep = min(n, room)
            return self._forward(self.raw_source(prefix, cont), EntryRows.raw(np.arange(n - keep, n + c - 1)),
                                 cont, info)
        if arm == "full" or n <= room:  # everything fits raw: uniform and mc are full attention too
            if arm == "mc":
                info = {"swap_rate": 0.0, "residency": 1.0}
                if answer_span is not None:
                    info |= {"key_raw": 1.0, "key_raw_reachable": 1.0}
            return self._forward(self.raw_source(prefix, cont), EntryRows.raw(np.arange(n + c - 1)), cont, info)
        levels, num_levels = self.tree(prefix)
        source = self.source(levels, prefix, cont)
        wc, info = self._compressed(arm, source, prefix, room, num_levels)
        if arm == "mc" and answer_span is not None:
            coarsest = WorkingContext.coarsest(n, self.nets.cfg.block_size, int(info["tail"]))  # the same start
            info |= answer_focus(wc, coarsest, answer_span, room)
        return self.predict_wc(wc, source, cont, info)

    def tree(self, prefix: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """GistNet's tree of the prefix: levels ``[1, N_l, D]`` (level 0 the prefix's token embeddings)."""
        nets = self.nets
        if nets is None:
            raise ValueError("the uniform and mc arms need the aux nets (GistNet, LensNet)")
        K, n = nets.cfg.block_size, int(prefix.numel())
        num_levels = max_tree_level(n, K) + 1
        lod0 = self.model.wte(prefix[None]).to(nets.aux_dtype)
        return build_levels(lod0, K, nets.gistnet, max_level=num_levels - 1), num_levels

    def source(self, levels: list[torch.Tensor], prefix: torch.Tensor, cont: torch.Tensor) -> LevelTable:
        """The entries of the prefix's tree and the continuation's tokens (raw, after the prefix)."""
        ids = torch.cat([prefix, cont[:-1]])[None]
        return LevelTable([self.model.wte(ids), *levels[1:]], ids)

    def raw_source(self, prefix: torch.Tensor, cont: torch.Tensor) -> LevelTable:
        ids = torch.cat([prefix, cont[:-1]])[None]
        return LevelTable([self.model.wte(ids)], ids)

    def tail(self, n: int, room: int) -> int:
        """The ``mc`` arm's protected tail for a prefix of ``n`` tokens within ``room`` entries
        (``focus.fitted_tail``, as a chat session's prompt)."""
        return fitted_tail(n, self.nets.cfg.block_size, self.nets.prompt_recent, room)

    def _compressed(self, arm: str, source: LevelTable, prefix: torch.Tensor, room: int, num_levels: int
                    ) -> tuple[WorkingContext, dict[str, float]]:
        nets = self.nets
        K, n = nets.cfg.block_size, int(prefix.numel())
        if arm == "uniform":
            return uniform_layout(n, room, K, nets.prompt_recent, num_levels - 1), {}
        recent = self.tail(n, room)
        wc = self._start(n, room, num_levels, recent)
        scorer = self.scorer(source, prefix)
        allocator = FocusAllocator(focus_config(nets.cfg, room, recent_tokens=recent, max_level=max(1, num_levels - 1)))
        swaps, resid = [], []
        for _ in range(self.rounds):
            before = wc
            wc, report = allocator.refocus(wc, scorer)
            swaps.append(report.swap_rate)
            resid.append(residency(before, wc))
        return wc, {"swap_rate": float(np.mean(swaps)), "residency": float(np.mean(resid)),
                    "gist_entries": float((wc.levels > 0).sum()), "tail": float(recent)}

    def start_layout(self, n: int, room: int, num_levels: int) -> WorkingContext:
        """The working context the ``mc`` arm's refocus calls start from (``start``), its protected tail
        (``tail``) raw."""
        return self._start(n, room, num_levels, self.tail(n, room))

    def _start(self, n: int, room: int, num_levels: int, recent: int) -> WorkingContext:
        K = self.nets.cfg.block_size
        if self.start == "recency":
            return WorkingContext.recency(n, room, K, recent, max_level=num_levels - 1)
        return start_layout(n, K, recent)

    def scorer(self, source: LevelTable, prefix: torch.Tensor):
        """LensNet utilities of a working context of the prefix against its last H tokens, through its
        ``focus.lens_view`` (gists above the level LensNet trained on scored by their descendants)."""
        nets = self.nets
        H, n = nets.cfg.mc_horizon, int(prefix.numel())
        tail = source.gather(np.zeros(H, dtype=np.int64), np.zeros(H, dtype=np.int64),
                             np.arange(n - H, n))[None].to(nets.aux_dtype)

        def score(wc: WorkingContext) -> np.ndarray:
            return lens_utilities(nets.lensnet, [wc], tail, source=source)[0]

        return score_through_view(score, self.lens_level)

    # ---- the base model over the view + the continuation ---------------------------------------
    @torch.no_grad()
    def predict_wc(self, wc: WorkingContext, source: LevelTable, cont: torch.Tensor,
                   info: dict[str, float] | None = None) -> Prediction:
        """The continuation's prediction over a given working context of the prefix's tree."""
        return self._forward(source, EntryRows.of([wc.append(int(cont.numel()) - 1)]), cont, info or {})

    def _forward(self, source: LevelTable, rows: EntryRows, cont: torch.Tensor,
                 info: dict[str, float]) -> Prediction:
        """The model over ``rows`` (the prefix's view, then ``cont[:-1]`` raw) built by ``model_inputs``,
        exactly as training and inference build theirs."""
        c = int(cont.numel())
        nets = self.nets
        inputs = model_inputs(source, rows, scheme=nets.cfg.mc_position_scheme if nets is not None else "ordinal",
                              sigma_scale=nets.cfg.mc_rope_gist_sigma if nets is not None else 0.0,
                              head_dim=self.model.head_dim, sequence_len=self.seq_len, rotary_dtype=torch.float32,
                              rope_base=rope_base(getattr(self.model, "gpt", self.model)))
        x = inputs.inputs_RWD.to(self.model.wte.weight.dtype)
        # nanochat's GPT adds a value embedding per raw token (``value_ids``, -1 for gists); TinyGPT has none
        extra = {"value_ids": inputs.value_ids_RW} if getattr(self.model, "uses_value_ids", False) else {}
        logits = self.model(inputs_embeds=x, cos_sin=inputs.cos_sin, **extra)[0].float()  # [E, vocab]
        E = x.shape[1]
        pred_logits = logits[E - c:]  # entry E-c is the last prefix token
        logp = torch.log_softmax(pred_logits, dim=-1)
        nll = -logp.gather(1, cont[:, None])[:, 0]
        return Prediction(nll.numpy().astype(np.float64), pred_logits.argmax(-1).numpy(), E, info)


def answer_focus(wc: WorkingContext, coarsest: WorkingContext, span: tuple[int, int], room: int
                 ) -> dict[str, float]:
    """Whether the answer's tokens ``span = [lo, hi)`` are raw in ``wc`` (``key_raw``), and whether any
    legal layout can hold them raw within ``room`` entries (``key_raw_reachable``: the budget's ceiling,
    independent of LensNet and of the model). The cheapest such layout is the ``coarsest`` one (same
    tail) with exactly the gists above the span expanded, so that is the one measured."""
    reach = coarsest
    while (g := covering_gists(reach, span)).size:
        reach = reach.expand(g)
    return {"key_raw": float(covering_gists(wc, span).size == 0), "key_raw_reachable": float(len(reach) <= room)}


def covering_gists(wc: WorkingContext, span: tuple[int, int]) -> np.ndarray:
    """Positions in ``wc`` of the gists that cover any of the tokens ``span = [lo, hi)``."""
    lo, hi = span
    return np.flatnonzero((wc.levels > 0) & (wc.starts < hi) & (wc.ends > lo))


def coarsest_entries(num_tokens: int, block_size: int, recent: int, predicted: int, slack: float = 0.25) -> int:
    """The most entries the coarsest layout (every level the tree has, the last ``recent`` tokens raw)
    takes for the history of a document of about ``num_tokens`` tokens (within ``slack``: a length in
    tokens varies with the text) of which the last ``predicted`` are predicted: the fewest a compressed
    arm can show that history in. The coarsest layout's length is not monotonic in the history's (its
    unaligned leftovers stay raw), so every history length in the range is measured."""
    lo = max(1, round(num_tokens * (1 - slack)) - predicted)
    hi = max(lo, round(num_tokens * (1 + slack)))
    return max(len(WorkingContext.coarsest(n, block_size, recent)) for n in range(lo, hi + 1))


def unheld_lengths(lengths: list[int] | tuple[int, ...], *, budget: int, horizon: int, block_size: int, recent: int,
                   slack: float) -> list[tuple[int, int]]:
    """``(x, entries needed)`` for each length ``x`` (a multiple of ``budget``) whose history the compressed
    arms cannot show: the coarsest layout (``coarsest_entries``) plus the ``horizon`` tokens NLL@H predicts
    exceeds the budget."""
    need = [(x, coarsest_entries(x * budget, block_size, recent, horizon, slack) + horizon - 1) for x in lengths]
    return [(x, n) for x, n in need if n > budget]


def unheld_reason(x: int, need: int, *, budget: int, horizon: int, block_size: int, recent: int) -> str:
    return (f"a history of {x}x{budget} tokens needs {need} entries even at its coarsest (blocks of {block_size}, "
            f"a raw tail of {recent}, {horizon} predicted tokens), more than the budget {budget}")


def uniform_layout(num_tokens: int, budget: int, block_size: int, recent: int, max_level: int) -> WorkingContext:
    """The protected tail raw, older history in gists of the finest single level that fits ``budget``
    (leftovers that no node of that level covers stay at lower levels, as alignment requires)."""
    coarsest = WorkingContext.coarsest(num_tokens, block_size, recent)
    best = coarsest
    for level in range(max(1, max_level), 0, -1):
        wc = coarsest
        while True:
            mask = wc.expandable_mask(recent) & (wc.levels > level)
            if not mask.any():
                break
            wc = wc.expand(np.flatnonzero(mask))
        if len(wc) <= budget:
            best = wc
        else:
            break
    if len(best) > budget:
        raise ValueError(f"budget {budget} cannot hold {num_tokens} tokens with a raw tail of {recent}")
    return best
