"""MCConfig: every MegaContext knob, its default, its validation and its command-line flags.

One table (the dataclass fields below) is the single source of truth: argparse registration,
validation messages, ``megacontext config`` and the knob reference (docs/knobs.md) all read it.

Flags are accepted with underscores or dashes (``--mc_tree`` and ``--mc-tree``); knobs whose
documented name has no ``mc_`` prefix (``--block_size``, ``--allocator_*``, ``--gistnet_*``,
``--lensnet_*``) are also accepted with it (``--mc_block_size``). ``--mc`` alone enables
MegaContext; without it nothing changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A user-facing configuration mistake. The message names the flag and what is allowed."""


def _knob(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    check: Callable[[Any], bool] | None = None,
    allowed: str = "",
    flags: Sequence[str] = (),
    group: str = "MegaContext",
) -> Any:
    """A dataclass field with its flag metadata.

    ``check(value) -> bool`` and ``allowed`` (the human description of the allowed values) drive
    validation; ``flags`` are extra documented names (without dashes) besides the field's own.
    """
    meta = {"help": help, "choices": choices, "check": check, "allowed": allowed, "flags": tuple(flags),
            "group": group}
    return field(default=default, metadata=meta)


def _is_power_of_two(v: int) -> bool:
    return v >= 2 and (v & (v - 1)) == 0


def _unit(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _open_unit(v: float) -> bool:
    return 0.0 < v <= 1.0


def _beta(v: float) -> bool:
    return 0.0 <= v < 1.0


def _multiples(v: str) -> bool:
    parts = [p.strip() for p in v.split(",")]
    return bool(v.strip()) and all(p.isdigit() and int(p) >= 1 for p in parts)


def _nonneg(v: float) -> bool:
    return v >= 0


def _pos(v: float) -> bool:
    return v > 0


_SESSION_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,63})?")
"""``--mc_session``: a plain directory name (no path separators, not hidden, not an option)."""

ALLOC = "Focus allocator"
NETS = "GistNet / LensNet"
LENS = "LensNet loss"
TELEMETRY = "Telemetry"
EVAL = "Post-run validation"


@dataclass(frozen=True)
class MCConfig:
    """Every MegaContext knob. Field name = flag name (``--<name>``), see the module docstring."""

    mc: bool = _knob(False, "enable MegaContext (tree, working context, controller)")

    # ---- tree and working context -------------------------------------------------------
    block_size: int = _knob(32, "K: tokens per LOD1 gist, gists per LOD2 gist, ... (8|32|128 in the recipes)",
                            check=_is_power_of_two, allowed="a power of two >= 2", flags=("mc_block_size",))
    mc_tree: str = _knob("ram", "where the MegaContext tree lives", choices=("ram", "disk"))
    mc_tree_dir: str = _knob("", "directory of disk trees (default: $NANOCHAT_BASE_DIR/megacontext/trees)")
    mc_tree_fsync: str = _knob("interval", "disk tree fsync policy: every policy survives a killed process; "
                               "'always' also survives power loss, 'interval' loses at most ~1 s of appends to it",
                               choices=("always", "interval", "never"))
    mc_wc_budget: int = _knob(0, "W_max: working-context entries the base model attends to "
                              "(0 = the model's sequence length)", check=_nonneg, allowed="an integer >= 0")
    mc_seed: int = _knob(1337, "seed of the controller's and allocator's random choices")
    mc_refocus_every: int = _knob(0, "inference: generated tokens between LensNet refocuses (the working context "
                                  "keeps at least this many entries free for them; 0 = budget/8, at most 32)",
                                  check=_nonneg, allowed="an integer >= 0")
    mc_inference_telemetry_every: int = _knob(1, "inference: refocuses between the shape events a chat session "
                                              "emits (mc_tree_snapshot, working_context_snapshot, "
                                              "focus_allocator; each prompt ends with a refocus); 0 = only "
                                              "inference_update", check=_nonneg, allowed="an integer >= 0")
    mc_wc_headroom: int = _knob(0, "inference: entries freed when the working context is full (oldest or "
                                "least useful spans become gists); larger = fewer KV recomputes, a less full "
                                "context (0 = max(--mc_refocus_every, budget/8))", check=_nonneg,
                                allowed="an integer >= 0")
    mc_session: str = _knob("", "inference: name of a persistent chat session (with --mc_tree disk its history "
                            "lives in --mc_tree_dir/NAME and survives restarts; empty = a fresh session per "
                            "conversation)", check=lambda v: _SESSION_NAME.fullmatch(v) is not None,
                            allowed="empty or 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)")
    mc_session_shared_by_all_clients: bool = _knob(
        False, "chat_web: allow --mc_session on a server that binds beyond loopback, knowing that it is one history "
        "that every client reads and extends (without it such a server refuses --mc_session)")
    mc_max_sessions: int = _knob(4, "inference: unnamed sessions kept so that their conversations continue without "
                                 "ingesting again; past it the least recently used one is dropped",
                                 check=_pos, allowed="an integer >= 1")
    mc_session_idle_s: float = _knob(600.0, "inference: an unnamed session unused for this many seconds is dropped "
                                     "at the next prompt (0 = only --mc_max_sessions drops them)", check=_nonneg,
                                     allowed="a number >= 0")
    mc_web_max_chars: int = _knob(0, "chat_web: characters a conversation, and one message, may hold with --mc "
                                  "(0 = what the tree and this machine can hold; without --mc upstream's 32,000 "
                                  "and 8,000 stay)", check=_nonneg, allowed="an integer >= 0")
    mc_web_ingest_s: float = _knob(120.0, "chat_web: seconds one request may spend ingesting its conversation; past "
                                   "them the answer is empty, and sending the conversation again continues the "
                                   "ingestion where it stopped (0 = no limit)", check=_nonneg,
                                   allowed="a number >= 0")

    # ---- training controller ------------------------------------------------------------
    mc_num_random_variants: int = _knob(2, "random working-context variants trained per sequence (exploration)",
                                        check=_nonneg, allowed="an integer >= 0")
    mc_onpolicy_variants: int = _knob(1, "on-policy variants per sequence: the focus allocator refocusing the "
                                      "prompt with the current LensNet, as inference does",
                                      check=_nonneg, allowed="an integer >= 0")
    mc_teacher_variants: int = _knob(2, "teacher-guided variants per sequence: the spans the horizon's loss "
                                     "depends on (input-gradient saliency of one full-context pass; no labels); "
                                     "every second one opens them without --allocator_expand_neighbours",
                                     check=_nonneg, allowed="an integer >= 0")
    mc_teacher_every: int = _knob(1, "the teacher's full-context pass runs on every N-th optimizer step "
                                  "(plain ones counted: keep N coprime with --mc_plain_every); the MC steps "
                                  "between train random variants in its variants' place and no distillation "
                                  "(the pass costs about two base forwards over the whole sequence)",
                                  check=_pos, allowed="an integer >= 1")
    mc_max_counterfactuals: int = _knob(8, "cap on variants per sequence (baseline + on-policy + teacher + random; "
                                        "random ones are dropped first)",
                                        check=lambda v: v >= 2, allowed="an integer >= 2")
    mc_train_wc_length: float = _knob(0.2, "final working-context length as a fraction of the sequence "
                                      "length (curriculum anneals from 0.8 down to this)",
                                      check=_open_unit, allowed="a fraction in (0, 1]")
    mc_plain_steps: int = _knob(0, "base_train: the first N optimizer steps train the model plainly (full "
                                "attention, no controller), so it learns to read its own context before it "
                                "reads gists; the curriculum anneals over the steps after them",
                                check=_nonneg, allowed="an integer >= 0")
    mc_plain_every: int = _knob(0, "every training stage (base_train after the plain steps, mid and SFT from "
                                "their first step): every N-th step trains plainly too (full attention over the "
                                "whole row; 0 = none), so that full attention, which the teacher's pass reads "
                                "with, keeps reading its whole window, and learns each stage's formats, while the "
                                "model learns to read gists", check=lambda v: v == 0 or v >= 2,
                                allowed="0 or an integer >= 2 (1 would leave no MegaContext step)")
    mc_anneal_fraction: float = _knob(1.0, "base_train and eval train-tiny: share of the MC steps over which the "
                                      "budget anneals to --mc_train_wc_length (it stays there for the rest)",
                                      check=_open_unit, allowed="a fraction in (0, 1]")
    mc_horizon: int = _knob(0, "H: tail tokens (raw in every variant) on which ΔNLL@H is measured; LensNet's "
                            "query is the H tokens before them (0 = sequence length / 16, within [8, 64])",
                            check=_nonneg, allowed="0 (auto) or an integer >= 1")
    mc_gist_loss_weight: float = _knob(1.0, "weight of the gist substitutability loss (tail NLL of the random "
                                       "variants relative to the recency baseline)", check=_nonneg,
                                       allowed="a number >= 0")
    mc_position_scheme: str = _knob("ordinal", "positions the base model sees for working-context entries "
                                    "(never beyond its trained range)", choices=("ordinal", "span_center_scaled"))
    mc_rope_gist_sigma: float = _knob(0.0, "Gaussian RoPE damping of gist entries: sigma = this x the node's span "
                                      "in tokens (0 = off; 0.2887 = a position uniform over the span)",
                                      check=_nonneg, allowed="a number >= 0")
    mc_aux_lr: float = _knob(1e-3, "AdamW learning rate of GistNet and LensNet", check=_pos, allowed="a number > 0")
    mc_auto_batch: int = _knob(1, "scale device batch and iterations so MC keeps vanilla's token budget",
                               choices=(0, 1))
    mc_aux_dtype: str = _knob("auto", "dtype of GistNet/LensNet (auto: bf16 where native, else fp32)",
                              choices=("auto", "fp32", "bf16"))

    # ---- LensNet preference loss --------------------------------------------------------
    mc_lens_loss_weight: float = _knob(0.1, "weight of the LensNet loss added to the training loss",
                                       check=_nonneg, allowed="a number >= 0", group=LENS)
    mc_lens_teacher_weight: float = _knob(1.0, "weight of LensNet's distillation of the teacher's saliency: "
                                          "per variant, a listwise KL between its gists' scores and their "
                                          "peak horizon saliency (needs the teacher pass; 0 = off)",
                                          check=_nonneg, allowed="a number >= 0", group=LENS)
    mc_lens_temperature: float = _knob(1.0, "Bradley–Terry temperature (lower = sharper)",
                                       check=_pos, allowed="a number > 0", group=LENS)
    mc_lens_adv_norm_beta: float = _knob(0.9, "EMA beta of the advantage normaliser",
                                         check=_beta, allowed="a number in [0, 1)", group=LENS)
    mc_lens_kl_weight: float = _knob(0.01, "weight of the KL term to the previous step's scores",
                                     check=_nonneg, allowed="a number >= 0", group=LENS)
    mc_lens_budget_smooth_weight: float = _knob(0.01, "weight of the budget-smoothing penalty",
                                                check=_nonneg, allowed="a number >= 0", group=LENS)
    mc_lens_budget_smooth_beta: float = _knob(0.9, "EMA beta of the budget-smoothing target",
                                              check=_beta, allowed="a number in [0, 1)", group=LENS)
    mc_lens_hard_negative_ratio: float = _knob(1.0, "fraction of preference pairs kept, largest "
                                               "|advantage| first (1.0 keeps all)",
                                               check=_open_unit, allowed="a fraction in (0, 1]", group=LENS)

    # ---- focus allocator ----------------------------------------------------------------
    allocator_type: str = _knob("greedy", "focus allocator", choices=("greedy", "stochastic_greedy"),
                                group=ALLOC)
    allocator_sample_top_k: int = _knob(8, "stochastic_greedy: sample among the top-k by |utility|",
                                        check=_pos, allowed="an integer >= 1", group=ALLOC)
    allocator_sample_temperature: float = _knob(0.5, "stochastic_greedy: softmax temperature over |utility|",
                                                check=_pos, allowed="a number > 0", group=ALLOC)
    allocator_soft_max_length: int = _knob(0, "target working-context length; collapses come first above "
                                           "it (0 = the budget)", check=_nonneg,
                                           allowed="an integer >= 0", group=ALLOC)
    allocator_recent_tokens: int = _knob(0, "protected recent tail of a prompt, kept raw and never edited "
                                         "(0 = H; shorter tails leave long histories room to open one more "
                                         "island)",
                                         check=_nonneg, allowed="an integer >= 0", group=ALLOC)
    allocator_expand_threshold: float = _knob(0.1, "expand an entry when its utility exceeds this",
                                              check=_unit, allowed="a number in [0, 1]", group=ALLOC)
    allocator_collapse_threshold: float = _knob(0.1, "collapse siblings when their mean utility is below "
                                                "minus this", check=_unit, allowed="a number in [0, 1]",
                                                group=ALLOC)
    allocator_max_replacements: int = _knob(1, "edits per allocator iteration: 1 drills into the best gist, "
                                            "re-scored every round, before spending the budget on the next",
                                            check=_pos, allowed="an integer >= 1", group=ALLOC)
    allocator_iterations: int = _knob(4, "allocator rounds per refocus, re-scoring between rounds",
                                      check=_pos, allowed="an integer >= 1", group=ALLOC)
    allocator_expand_neighbours: int = _knob(1, "after each refocus's rounds, expand up to this many level-1 "
                                             "gists left of each level-1 gist it expanded (the words that "
                                             "introduce it), with the room the rounds left",
                                             check=_nonneg, allowed="an integer >= 0", group=ALLOC)
    allocator_cooldown: int = _knob(2, "refocuses before an edited node may flip back (hysteresis)",
                                    check=_nonneg, allowed="an integer >= 0", group=ALLOC)

    # ---- nets ---------------------------------------------------------------------------
    gistnet_layers: int = _knob(2, "GistNet transformer layers inside a block", check=_pos,
                                allowed="an integer >= 1", group=NETS)
    gistnet_heads: int = _knob(4, "GistNet attention heads (must divide the model width)", check=_pos,
                               allowed="an integer >= 1", group=NETS)
    gistnet_width: int = _knob(0, "GistNet internal width (0 = half the model width, a few % of base FLOPs)",
                               check=_nonneg, allowed="an integer >= 0", group=NETS)
    gistnet_pooling: str = _knob("attention", "how GistNet pools a block into one vector",
                                 choices=("attention", "mean", "first"), group=NETS)
    gistnet_head: str = _knob("mlp", "GistNet output head", choices=("linear", "mlp"), group=NETS)
    lensnet_layers: int = _knob(2, "LensNet layers", check=_pos, allowed="an integer >= 1", group=NETS)
    lensnet_heads: int = _knob(4, "LensNet attention heads", check=_pos, allowed="an integer >= 1",
                               group=NETS)
    lensnet_dim: int = _knob(128, "LensNet hidden width", check=_pos, allowed="an integer >= 1", group=NETS)
    lensnet_context: str = _knob("bidirectional", "what LensNet attends to: all entries both ways, or "
                                 "cross-attention from entries to the recent tail",
                                 choices=("bidirectional", "cross"), group=NETS)

    # ---- telemetry ----------------------------------------------------------------------
    mc_telemetry: str = _knob("auto", "where MC telemetry events go: a JSONL file per run, an OTLP collector "
                              "(MC_OTEL_ENDPOINT, OTEL_*) or nowhere; auto = otlp when MC_OTEL_ENDPOINT is set, "
                              "else jsonl", choices=("auto", "jsonl", "otlp", "none"), group=TELEMETRY)
    mc_telemetry_every: int = _knob(50, "steps between telemetry snapshots (events, focus probe for swap rate "
                                    "and residency, their alerts); 0 = off", check=_nonneg,
                                    allowed="an integer >= 0", group=TELEMETRY)
    mc_telemetry_dir: str = _knob("", "directory of JSONL telemetry runs (default: "
                                  "$NANOCHAT_BASE_DIR/megacontext/telemetry)", group=TELEMETRY)
    mc_eval_lengths: str = _knob("2,4", "base_eval/chat_eval: held-out document lengths of the post-run validation, "
                                 "as multiples of the checkpoint's budget", check=_multiples,
                                 allowed="comma list of integers >= 1", group=EVAL)
    mc_eval_samples: int = _knob(2, "base_eval/chat_eval: passkey documents per (depth, length) and recall documents "
                                 "per length of the post-run validation (larger = steadier, slower)", check=_pos,
                                 allowed="an integer >= 1", group=EVAL)
    mc_eval_seed: int = _knob(4321, "base_eval/chat_eval: seed of the validation's documents (held out: the corpus "
                              "and task generators use other seeds)", group=EVAL)

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_value(f, getattr(self, f.name))
        if self.allocator_soft_max_length and self.mc_wc_budget and \
                self.allocator_soft_max_length > self.mc_wc_budget:
            raise ConfigError(
                f"--allocator_soft_max_length ({self.allocator_soft_max_length}) is larger than "
                f"--mc_wc_budget ({self.mc_wc_budget}); allowed: 0 (= the budget) or a length <= the budget")
        if self.mc_onpolicy_variants + self.mc_teacher_variants + self.mc_num_random_variants < 1:
            raise ConfigError("--mc_onpolicy_variants, --mc_teacher_variants and --mc_num_random_variants are all 0: "
                              "training needs at least one variant besides the recency baseline")
        if self.mc_wc_budget and self.allocator_recent_tokens >= self.mc_wc_budget:
            raise ConfigError(
                f"--allocator_recent_tokens ({self.allocator_recent_tokens}) must be smaller than "
                f"--mc_wc_budget ({self.mc_wc_budget}): the protected tail has to fit in the working context")

    @property
    def variant_counts(self) -> tuple[int, int, int]:
        """``(on_policy, teacher, random)`` variants per sequence actually trained besides the recency
        baseline: ``--mc_max_counterfactuals`` caps the total, dropping random ones first, then teacher ones."""
        room = self.mc_max_counterfactuals - 1
        on_policy = min(self.mc_onpolicy_variants, room)
        teacher = min(self.mc_teacher_variants, room - on_policy)
        return on_policy, teacher, min(self.mc_num_random_variants, room - on_policy - teacher)

    @property
    def num_variants(self) -> int:
        """Variants per sequence actually trained: the recency baseline plus the guided and random ones."""
        return 1 + sum(self.variant_counts)

    def wc_budget(self, sequence_len: int) -> int:
        """W_max for a base model trained at ``sequence_len``."""
        return self.mc_wc_budget or sequence_len

    def soft_max_length(self, sequence_len: int) -> int:
        return self.allocator_soft_max_length or self.wc_budget(sequence_len)

    def horizon(self, sequence_len: int) -> int:
        """H at ``sequence_len``: ``--mc_horizon``, or (0 = auto) ``sequence_len // 16`` within [8, 64]."""
        return self.mc_horizon or max(8, min(64, sequence_len // 16))

    def prompt_tail(self, sequence_len: int) -> int:
        """Raw tokens at the end of a prompt that the allocator never edits: ``--allocator_recent_tokens``,
        or H when it is 0. LensNet's query (the prompt's last H tokens) is read from the tree's raw tokens
        whatever the layout holds, so a tail shorter than H is legal (D55)."""
        return self.allocator_recent_tokens or self.horizon(sequence_len)

    def training_tail(self, sequence_len: int) -> int:
        """Raw tokens at the end of every training variant: the prompt's tail, then the horizon whose
        loss is measured (the tokens inference will generate after the prompt)."""
        return self.prompt_tail(sequence_len) + self.horizon(sequence_len)

    def for_model(self, sequence_len: int) -> MCConfig:
        """This config with the automatic values (``--mc_horizon 0``) resolved for ``sequence_len``,
        validated (``validate_for_model``); what the controller, inference and checkpoints keep."""
        self.validate_for_model(sequence_len)
        return dataclasses.replace(self, mc_horizon=self.horizon(sequence_len))

    def validate_for_model(self, sequence_len: int) -> None:
        """Checks that need the base model's sequence length (called once the model is known)."""
        budget = self.wc_budget(sequence_len)
        if budget > sequence_len:
            raise ConfigError(
                f"--mc_wc_budget ({budget}) exceeds the model's sequence length ({sequence_len}); "
                f"the base model must never attend beyond what it was trained on")
        if self.allocator_recent_tokens >= budget:
            raise ConfigError(
                f"--allocator_recent_tokens ({self.allocator_recent_tokens}) must be smaller than the "
                f"working-context budget ({budget})")
        if self.block_size > sequence_len:
            raise ConfigError(f"--block_size ({self.block_size}) exceeds the sequence length ({sequence_len})")
        tail = self.training_tail(sequence_len)
        final = math.floor(self.mc_train_wc_length * sequence_len)
        if final <= tail:
            raise ConfigError(
                f"--mc_train_wc_length ({self.mc_train_wc_length}) gives {final} entries at sequence length "
                f"{sequence_len}, not more than the raw tail of a training variant ({tail}: the prompt's tail "
                f"{self.prompt_tail(sequence_len)}, --allocator_recent_tokens or else H, plus the horizon "
                f"H={self.horizon(sequence_len)}, --mc_horizon); raise the fraction or lower the tail")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}


def _check_value(f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    flag = f"--{f.name}"
    expected = _TYPES[str(f.type)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{flag}: expected {expected.__name__}, got {value!r}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{flag}: got {value!r}; allowed: {meta['allowed'] or 'a finite number'}")
    if meta["choices"] is not None and value not in meta["choices"]:
        allowed = "|".join(str(c) for c in meta["choices"])
        raise ConfigError(f"{flag}: got {value!r}; allowed: {allowed}")
    if meta["check"] is not None and not meta["check"](value):
        raise ConfigError(f"{flag}: got {value!r}; allowed: {meta['allowed']}")


def knob_fields() -> Iterator[dataclasses.Field[Any]]:
    yield from dataclasses.fields(MCConfig)


def config_from_saved(values: dict[str, Any]) -> MCConfig:
    """The ``MCConfig`` a checkpoint saved (``as_dict``), checked like flags; a setting this version
    does not have is a ``ConfigError`` naming it: another version wrote the file, and its knob
    would mean something this code cannot honour."""
    unknown = sorted(set(values) - {f.name for f in knob_fields()})
    if unknown:
        raise ConfigError(f"written by another version of megacontext-plugin (settings this version does not "
                          f"have: {', '.join(unknown)})")
    return MCConfig(**values)


def is_checkpoint_knob(name: str) -> bool:
    """Knobs that shape the aux nets' parameters or the working context they were trained on: a
    later stage (mid, SFT, chat) takes them from the checkpoint it starts from."""
    return (name == "block_size" or name.startswith(("gistnet_", "lensnet_"))
            or name in ("mc_horizon", "allocator_recent_tokens", "mc_position_scheme", "mc_rope_gist_sigma"))


EXPLICIT_ATTR = "mc_explicit_knobs"
"""Namespace attribute: the set of knobs the user gave on the command line (``register_arguments``)."""


class _StoreExplicit(argparse.Action):
    """Stores the value and records that the user gave this knob: a later stage takes the knobs its
    checkpoint was trained with unless the user gave them (then a contradiction is an error)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        # a sorted list, not a set: nanochat saves the parsed arguments in its checkpoint's JSON meta
        setattr(namespace, EXPLICIT_ATTR, sorted({*getattr(namespace, EXPLICIT_ATTR, ()), self.dest}))


def explicit_knobs(args: argparse.Namespace) -> set[str]:
    """The knobs given on the command line that ``args`` was parsed from."""
    return set(getattr(args, EXPLICIT_ATTR, ()))


def flag_names(f: dataclasses.Field[Any]) -> list[str]:
    """Every accepted spelling of a knob's flag, documented name first."""
    names = [f.name, *f.metadata["flags"]]
    if f.name != "mc" and not f.name.startswith("mc_"):
        names.append("mc_" + f.name)
    spelled: list[str] = []
    for name in dict.fromkeys(names):
        for variant in (name, name.replace("_", "-")):
            if f"--{variant}" not in spelled:
                spelled.append(f"--{variant}")
    return spelled


def _parse_bool_int(text: str) -> int:
    if text in ("0", "1"):
        return int(text)
    raise argparse.ArgumentTypeError(f"got {text!r}; allowed: 1|0")


def _parse_enabled(text: str) -> bool:
    return bool(_parse_bool_int(text))


def _arg_type(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    base = _TYPES[str(f.type)]
    meta = f.metadata

    def convert(text: str) -> Any:
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; expected {base.__name__}") from None
        try:
            _check_value(f, value)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
        return value

    convert.__name__ = meta["allowed"] or base.__name__
    return convert


def register_arguments(parser: argparse.ArgumentParser, *, only: Collection[str] | None = None,
                       defaults: Mapping[str, Any] | None = None) -> None:
    """Add ``--mc`` and every knob to ``parser`` (both ``--mc_foo`` and ``--mc-foo`` spellings).

    Parsed values land on the namespace under the field names; use :func:`config_from_args`.
    ``only``: the knobs to add (default: all); ``defaults``: other defaults for some of them,
    checked as a flag's value is. A recipe of this package (``eval train-tiny``) takes its knobs
    from here under their real names with its own defaults, so its flags, help and checks are the
    scripts' own and cannot drift apart from them.
    """
    names_known = {f.name for f in knob_fields()}
    wanted = names_known if only is None else set(only)
    overrides = dict(defaults or {})
    unknown = sorted((wanted | set(overrides)) - names_known)
    if unknown:
        raise ValueError(f"not knobs of MCConfig: {', '.join(unknown)}")
    if not set(overrides) <= wanted:
        raise ValueError(f"defaults of knobs not added: {', '.join(sorted(set(overrides) - wanted))}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in knob_fields():
        if f.name not in wanted:
            continue
        group = groups.setdefault(f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
        names = flag_names(f)
        default = overrides.get(f.name, f.default)
        if f.name in overrides:
            _check_value(f, default)
        help_text = f"{f.metadata['help']} (default: {default})".replace("%", "%%")  # argparse formats help with %
        if str(f.type) == "bool":
            group.add_argument(*names, dest=f.name, action="store_true", default=default, help=help_text)
            # the operating guide's spelling: --mc_enabled 1|0 is --mc / no --mc (the last one given wins)
            group.add_argument(*(f"--{f.name}_enabled", f"--{f.name}-enabled"), dest=f.name, type=_parse_enabled,
                               metavar="1|0", help=f"--{f.name}_enabled 1 is --{f.name}, 0 leaves it off")
        elif f.metadata["choices"] is not None and str(f.type) == "int":
            group.add_argument(*names, dest=f.name, type=_parse_bool_int, default=default, action=_StoreExplicit,
                               metavar="|".join(str(c) for c in f.metadata["choices"]), help=help_text)
        elif f.metadata["choices"] is not None:
            group.add_argument(*names, dest=f.name, type=str, choices=f.metadata["choices"], default=default,
                               action=_StoreExplicit,
                               metavar="|".join(f.metadata["choices"]), help=help_text)
        else:
            group.add_argument(*names, dest=f.name, type=_arg_type(f), default=default, help=help_text,
                               action=_StoreExplicit)


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> MCConfig:
    """Build the validated config from parsed arguments.

    With ``parser`` given, a cross-flag mistake ends the program through ``parser.error`` (one
    clear line, exit status 2, no traceback); otherwise :class:`ConfigError` is raised.
    """
    values = {f.name: getattr(args, f.name) for f in knob_fields() if hasattr(args, f.name)}
    try:
        return MCConfig(**values)
    except ConfigError as e:
        if parser is None:
            raise
        parser.error(str(e))


def parse_config(argv: Sequence[str]) -> MCConfig:
    """Parse MegaContext flags alone (used by tests and ``megacontext config``)."""
    parser = argparse.ArgumentParser(prog="megacontext config", usage="megacontext config [--mc] [--KNOB VALUE ...]")
    register_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)), parser)


def knobs_markdown() -> str:
    """The knob reference table of docs/knobs.md, generated from the fields so the two cannot drift apart."""
    lines = ["| flag | default | allowed | what it does |", "| --- | --- | --- | --- |"]
    for f in knob_fields():
        meta = f.metadata
        if meta["choices"] is not None:
            allowed = "|".join(str(c) for c in meta["choices"])
        elif str(f.type) == "bool":
            allowed = "flag"
        else:
            allowed = meta["allowed"] or str(f.type)
        extra = [n for n in flag_names(f)[1:] if "-" not in n[2:]]
        flag = f"`--{f.name}`" + (" (" + ", ".join(f"`{n}`" for n in extra) + ")" if extra else "")
        default = f"`{f.default}`" if f.default != "" else "(empty)"
        cells = [flag, default, allowed, meta["help"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
