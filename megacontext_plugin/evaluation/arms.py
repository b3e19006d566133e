"""The four arms of the long-context evaluation, each at a fixed working-context budget ``W``.

Every arm answers one question: given a history ``prefix`` (token ids) and a continuation
``cont`` (ids), what does the base model predict for each token of ``cont`` (teacher forcing)?
The model sees at most ``W`` entries: a view of the prefix built by the arm (at most
``W - (len(cont) - 1)`` entries), then ``cont[:-1]`` raw. The last prefix entry is always the
last prefix token raw, so its output predicts ``cont[0]``.

- ``truncation``: the last prefix tokens that fit, raw (what vanilla attention does at ``W``).
- ``uniform``: the protected tail raw, the older history as gists of one level, the finest level
  whose tiling fits (no focus; room it cannot use stays empty).
- ``mc``: MegaContext: GistNet's tree of the prefix, the coarsest (or recency) working context,
  then the focus allocator refocusing it with LensNet's scores against the last ``H`` prefix tokens
  (``--mc_horizon``) for ``rounds`` refocus calls. LensNet never sees ``cont`` (no leak of the
  answer into what is expanded).
- ``full``: every prefix token raw (only where ``len(prefix) + len(cont) - 1`` fits the model's
  ``sequence_len``; the upper bound).

Positions follow the controller's ``--mc_position_scheme`` (and gist damping) exactly as training
packs them. All of it runs under ``torch.no_grad`` on batch size one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..context.positions import entry_positions, rotary_cos_sin, span_sigma
from ..context.working_context import WorkingContext
from ..focus import FocusAllocator
from ..training.layouts import max_tree_level
from ..training.probe import focus_config, residency
from ..tree.building import build_levels

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
    ``forward(inputs_embeds=..., cos_sin=...)``, ``config.sequence_len``); ``controller`` an
    ``MCController`` (GistNet, LensNet, config) for the ``uniform`` and ``mc`` arms."""

    def __init__(self, model: nn.Module, controller: nn.Module | None, budget: int, *, rounds: int = 4,
                 start: str = "coarsest") -> None:
        self.model, self.ctrl, self.budget, self.rounds, self.start = model, controller, budget, rounds, start
        if start not in ("recency", "coarsest"):
            raise ValueError(f"start must be recency or coarsest, got {start!r}")
        self.seq_len = int(model.config.sequence_len)
        if budget > self.seq_len:
            raise ValueError(f"budget {budget} exceeds the model's sequence_len {self.seq_len}")

    # ---- the arm's view of the prefix -----------------------------------------------------------
    def fits_full(self, n_prefix: int, n_cont: int) -> bool:
        return n_prefix + n_cont - 1 <= self.seq_len

    @torch.no_grad()
    def predict(self, arm: str, prefix: torch.Tensor, cont: torch.Tensor) -> Prediction:
        n, c = int(prefix.numel()), int(cont.numel())
        room = self.budget - (c - 1)
        info: dict[str, float] = {}
        if arm == "full":
            if not self.fits_full(n, c):
                raise ValueError(f"full attention needs {n + c - 1} <= sequence_len {self.seq_len}")
            emb = self.model.wte(prefix[None])[0]
            starts = np.arange(n)
            ends = starts + 1
            levels = np.zeros(n, dtype=np.int64)
        elif arm == "truncation":
            keep = min(n, room)
            emb = self.model.wte(prefix[None, n - keep:])[0]
            starts = np.arange(n - keep, n)
            ends = starts + 1
            levels = np.zeros(keep, dtype=np.int64)
        elif arm in ("uniform", "mc"):
            if n <= room:  # everything fits raw: both arms are full attention
                emb = self.model.wte(prefix[None])[0]
                starts = np.arange(n)
                ends, levels = starts + 1, np.zeros(n, dtype=np.int64)
                if arm == "mc":
                    info = {"swap_rate": 0.0, "residency": 1.0}
            else:
                wc, table, offsets, info = self._compressed(arm, prefix, room)
                return self.predict_wc(wc, table, offsets, prefix, cont, info)
        else:
            raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
        return self._forward(emb, starts, ends, levels, prefix, cont, info)

    def tree(self, prefix: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, int]:
        ctrl = self.ctrl
        if ctrl is None:
            raise ValueError("the uniform and mc arms need the controller (GistNet, LensNet)")
        K, n = ctrl.cfg.block_size, int(prefix.numel())
        num_levels = max_tree_level(n, K) + 1
        lod0 = self.model.wte(prefix[None])
        levels = build_levels(lod0.to(ctrl.aux_dtype), K, ctrl.gistnet, max_level=num_levels - 1)
        levels[0] = lod0.to(ctrl.aux_dtype)
        sizes = [int(level.shape[1]) for level in levels]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        table = torch.cat([level[0] for level in levels], dim=0)
        return table, offsets, lod0.to(ctrl.aux_dtype), num_levels

    def _compressed(self, arm: str, prefix: torch.Tensor, room: int
                    ) -> tuple[WorkingContext, torch.Tensor, np.ndarray, dict[str, float]]:
        ctrl = self.ctrl
        table, offsets, lod0, num_levels = self.tree(prefix)
        K, n, recent = ctrl.cfg.block_size, int(prefix.numel()), int(ctrl.recent)
        if arm == "uniform":
            return uniform_layout(n, room, K, recent, num_levels - 1), table, offsets, {}
        wc = (WorkingContext.recency(n, room, K, recent, max_level=num_levels - 1) if self.start == "recency"
              else WorkingContext.coarsest(n, K, recent))
        scorer = self.scorer(table, offsets, lod0)
        allocator = FocusAllocator(focus_config(ctrl, room, num_levels))
        swaps, resid = [], []
        for _ in range(self.rounds):
            before = wc
            wc, report = allocator.refocus(wc, scorer)
            swaps.append(report.swap_rate)
            resid.append(residency(before, wc))
        return wc, table, offsets, {"swap_rate": float(np.mean(swaps)), "residency": float(np.mean(resid)),
                                    "gist_entries": float((wc.levels > 0).sum())}

    def scorer(self, table: torch.Tensor, offsets: np.ndarray, lod0: torch.Tensor):
        """LensNet utilities of a working context's entries against the last H prefix tokens."""
        ctrl = self.ctrl
        H = ctrl.cfg.mc_horizon
        tail = lod0[:, lod0.shape[1] - H:]

        def score(wc: WorkingContext) -> np.ndarray:
            rows = torch.from_numpy(offsets[wc.levels.astype(np.int64)] + wc.indices.astype(np.int64))
            lv = torch.from_numpy(wc.levels.astype(np.int64))[None]
            spans = torch.from_numpy((wc.ends - wc.starts).astype(np.int64))[None]
            return ctrl.lensnet(table.index_select(0, rows)[None], lv, spans, tail)[0].float().numpy()

        return score

    # ---- the base model over the view + the continuation ---------------------------------------
    @torch.no_grad()
    def predict_wc(self, wc: WorkingContext, table: torch.Tensor, offsets: np.ndarray, prefix: torch.Tensor,
                   cont: torch.Tensor, info: dict[str, float] | None = None) -> Prediction:
        """The continuation's prediction over a given working context of the prefix's tree."""
        rows = torch.from_numpy(offsets[wc.levels.astype(np.int64)] + wc.indices.astype(np.int64))
        emb = table.index_select(0, rows)
        return self._forward(emb, wc.starts.astype(np.int64), wc.ends.astype(np.int64),
                             wc.levels.astype(np.int64), prefix, cont, info or {})

    def _forward(self, emb: torch.Tensor, starts: np.ndarray, ends: np.ndarray, levels: np.ndarray,
                 prefix: torch.Tensor, cont: torch.Tensor, info: dict[str, float]) -> Prediction:
        n, c = int(prefix.numel()), int(cont.numel())
        model = self.model
        dtype = model.wte.weight.dtype
        cont_emb = model.wte(cont[None, :-1])[0]
        x = torch.cat([emb.to(dtype), cont_emb], dim=0)[None]
        all_starts = np.concatenate([starts, np.arange(n, n + c - 1)]).astype(np.int64)
        all_ends = np.concatenate([ends, np.arange(n + 1, n + c)]).astype(np.int64)
        all_levels = np.concatenate([levels, np.zeros(c - 1, dtype=np.int64)])
        cos_sin = self._rotary(all_starts, all_ends, all_levels)
        logits = model(inputs_embeds=x, cos_sin=cos_sin)[0].float()  # [E, vocab]
        E = x.shape[1]
        pred_logits = logits[E - c:]  # entry E-c is the last prefix token
        logp = torch.log_softmax(pred_logits, dim=-1)
        nll = -logp.gather(1, cont[:, None])[:, 0]
        return Prediction(nll.numpy().astype(np.float64), pred_logits.argmax(-1).numpy(), E, info)

    def _rotary(self, starts: np.ndarray, ends: np.ndarray, levels: np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        ctrl = self.ctrl
        scheme = ctrl.cfg.mc_position_scheme if ctrl is not None else "ordinal"
        sigma_scale = ctrl.cfg.mc_rope_gist_sigma if ctrl is not None else 0.0
        if scheme == "ordinal" and sigma_scale == 0.0:
            return None  # the model's own table, exactly as training packs it
        s = torch.from_numpy(starts)[None]
        e = torch.from_numpy(ends)[None]
        pos = entry_positions(s, e, scheme, self.seq_len)
        sigma = span_sigma(e - s, sigma_scale) if sigma_scale > 0 else None
        return rotary_cos_sin(pos, self.model.head_dim, dtype=torch.float32, gaussian_sigma=sigma)


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
