"""The conversations of ``megacontext tasks`` in nanochat master's dataset cache, so that master's
``chat_sft`` trains on them offline with no upstream line changed.

Master reads its chat data through ``tasks.common.load_hub_dataset``: parquet shards in
``$NANOCHAT_BASE_DIR/task_data/{owner--name}/{subset}/{split}/``, listed by a ``manifest.json`` written
last; it downloads only where the manifest is missing. (The pin reads ``$NANOCHAT_TASK_DIR`` through our
patched ``tasks/customjson.py`` instead: :func:`conversations.write_task_dir`.)

- SmolTalk (train, test), the SFT mixture's conversations: ours. Master has no mid-training, so train holds
  the mid and the SFT conversations, test their validation splits. Only conversations that fit one row of
  master's loader: its best-fit packing never crops, and a conversation longer than a row
  (``max_seq_len + 1`` tokens) stays in its 100-conversation buffer for good, so a few hundred of them
  leave every later row padding, trained on nothing (D52). Each split holds its first ``count``
  conversations (of ``conversations.generate_conversations``'s seeded stream) that fit: the pin's very
  conversations, less those that do not.
- MMLU (all: auxiliary_train, test) and GSM8K (main: train, test): placeholder rows in their schemas.
  ``chat_sft`` builds its validation mixture eagerly from slices of their test splits (``stop=5200`` and
  ``420``), so they must hold that many rows; a recipe trains on none of them (``--mmlu-epochs 0
  --gsm8k-epochs 0``), and its validation loss mixes them in, so it measures the run's own data only
  in part.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import conversations

SMOLTALK = ("HuggingFaceTB/smol-smoltalk", "default")
MMLU = ("cais/mmlu", "all")
GSM8K = ("openai/gsm8k", "main")
VAL_ROWS = {MMLU: 5200, GSM8K: 420}
"""Rows of chat_sft's validation slices (``MMLU(..., stop=5200)``, ``GSM8K(..., stop=420)``): it indexes up to them."""
DRAWS_PER_ROW = 20
"""Conversations drawn at most per one kept (a split with fewer fitting ones is an error, not a loop)."""
PLACEHOLDER_TRAIN_ROWS = 16
"""Rows of the MMLU and GSM8K train splits (read only with ``--mmlu-epochs``/``--gsm8k-epochs`` above 0)."""


def _mmlu_rows(n: int) -> list[dict[str, object]]:
    return [{"question": f"What is {i} plus one?", "choices": [str(i + d) for d in (1, 0, 2, 3)], "answer": 0,
             "subject": "elementary_mathematics"} for i in range(n)]


def _gsm8k_rows(n: int) -> list[dict[str, object]]:
    return [{"question": f"Tom has {i} apples and buys 2 more. How many apples does he have?",
             "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}"} for i in range(n)]


def _write(base_dir: Path, dataset: tuple[str, str], split: str, rows: list[dict[str, object]]) -> Path:
    """One shard and its manifest (last, as ``load_hub_dataset`` expects), replacing what was there."""
    repo_id, subset = dataset
    out = base_dir / "task_data" / repo_id.replace("/", "--") / subset / split
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.json"
    manifest.unlink(missing_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "00000.parquet")
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(["00000.parquet"]))
    os.replace(tmp, manifest)
    return out


def rendered_tokens(messages: Sequence[dict[str, str]], count: Callable[[str], int]) -> int:
    """Tokens of a conversation as master's ``render_conversation`` lays it out: BOS, then each message's
    content between its role's start and end tokens; ``count(text)`` = the content's tokens."""
    return 1 + sum(count(m["content"]) + 2 for m in messages)


def estimated_tokens(text: str) -> int:
    """A token count that does not fall short for a nanochat tokenizer of 512 tokens or more
    (:data:`conversations.CHARS_PER_TOKEN` characters per token at most)."""
    return math.ceil(len(text) / conversations.CHARS_PER_TOKEN)


def write_hub_cache(base_dir: str | os.PathLike[str], *, seed: int = 0,
                    counts: dict[str, int] | None = None, lengths: conversations.Lengths | None = None,
                    count_tokens: Callable[[str], int] = estimated_tokens,
                    progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Write the cache under ``base_dir/task_data``; rows per dataset split written. ``counts``: conversations
    per split of :data:`conversations.SPLITS` (default :data:`conversations.DEFAULT_COUNTS`): the first that
    fit one row of ``lengths.max_seq_len + 1`` tokens, counted by ``count_tokens`` (the run's tokenizer, else
    :func:`estimated_tokens`), of those ``write_task_dir`` writes for the same seed. ``ValueError`` when too
    few fit (a window too small for the conversations)."""
    counts = dict(conversations.DEFAULT_COUNTS) | (counts or {})
    lengths = lengths or conversations.Lengths()
    row = lengths.max_seq_len + 1
    base = Path(base_dir)

    def chats(*splits: str) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for split in splits:
            want, seen = counts[split], 0
            kept: list[dict[str, object]] = []
            for conv in conversations.generate_conversations(seed, split, want * DRAWS_PER_ROW, None, lengths):
                seen += 1
                conversations.check_messages(list(conv.messages))
                if rendered_tokens(conv.messages, count_tokens) <= row:
                    kept.append({"messages": list(conv.messages)})
                    if len(kept) == want:
                        break
            if len(kept) < want:
                raise ValueError(f"{split}: only {len(kept)} of {seen} conversations fit master's rows of {row} tokens "
                                 f"(--max-seq-len {lengths.max_seq_len}); {want} wanted: lower --length-factor")
            if progress is not None and seen > want:
                progress(f"{split}: {want} conversations that fit a row of {row} tokens, {seen - want} longer ones "
                         f"left out (master's loader never crops)")
            rows += kept
        return rows

    written = {
        "smoltalk/train": _write(base, SMOLTALK, "train", chats("mid_train", "sft_train")),
        "smoltalk/test": _write(base, SMOLTALK, "test", chats("mid_val", "sft_val")),
        "mmlu/auxiliary_train": _write(base, MMLU, "auxiliary_train", _mmlu_rows(PLACEHOLDER_TRAIN_ROWS)),
        "mmlu/test": _write(base, MMLU, "test", _mmlu_rows(VAL_ROWS[MMLU])),
        "gsm8k/train": _write(base, GSM8K, "train", _gsm8k_rows(PLACEHOLDER_TRAIN_ROWS)),
        "gsm8k/test": _write(base, GSM8K, "test", _gsm8k_rows(VAL_ROWS[GSM8K])),
    }
    rows = {name: pq.read_metadata(path / "00000.parquet").num_rows for name, path in written.items()}
    if progress is not None:
        for name, path in written.items():
            progress(f"wrote {path}: {rows[name]} rows")
    return rows
