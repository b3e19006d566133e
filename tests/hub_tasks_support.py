"""Offline stand-ins for the Hugging Face datasets that nanochat master's chat_sft and chat_eval read
(``test_nanochat_hooks``'s master stages).

Master reads task data through ``tasks.common.load_hub_dataset``: parquet shards in
``$NANOCHAT_BASE_DIR/task_data/{owner--name}/{subset}/{split}/``, listed by a ``manifest.json``
written last; it downloads only when the manifest is missing. Writing the shards and the manifest
there first runs chat_sft offline with no upstream line changed (the pin reads ``NANOCHAT_TASK_DIR``
through its patched ``tasks/customjson.py`` instead).

SmolTalk (train, test): our seeded conversations (``data.conversations.generate_conversations``, the SFT
mixture). MMLU (all: auxiliary_train, test) and GSM8K (main: train, test): tiny rows in their schemas,
as many as chat_sft's validation mixture slices (``stop=``: 5,200 and 420); accuracy on them measures
nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from megacontext_plugin.data.conversations import generate_conversations

SMOLTALK = ("HuggingFaceTB/smol-smoltalk", "default")
MMLU = ("cais/mmlu", "all")
GSM8K = ("openai/gsm8k", "main")
VAL_ROWS = {MMLU: 5200, GSM8K: 420}
"""Rows of chat_sft's validation slices (``MMLU(..., stop=5200)``, ``GSM8K(..., stop=420)``): it indexes up to them."""


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


def write_hub_tasks(base_dir: str | os.PathLike[str], *, seed: int = 0, sft_train: int = 400, sft_val: int = 40,
                    small: int = 16) -> list[Path]:
    """Write the stand-ins under ``base_dir/task_data``; the folders written. ``small``: rows of the MMLU
    and GSM8K train splits (their test splits have :data:`VAL_ROWS`)."""
    base = Path(base_dir)
    smoltalk = {split: [{"messages": list(conv.messages)} for conv in generate_conversations(seed, name, count)]
                for split, name, count in (("train", "sft_train", sft_train), ("test", "sft_val", sft_val))}
    return [_write(base, SMOLTALK, "train", smoltalk["train"]), _write(base, SMOLTALK, "test", smoltalk["test"]),
            _write(base, MMLU, "auxiliary_train", _mmlu_rows(small)),
            _write(base, MMLU, "test", _mmlu_rows(VAL_ROWS[MMLU])),
            _write(base, GSM8K, "train", _gsm8k_rows(small)),
            _write(base, GSM8K, "test", _gsm8k_rows(VAL_ROWS[GSM8K]))]
