"""An offline stand-in for nanochat's CORE eval bundle: one local task from our seeded generators.

``scripts/base_eval`` downloads ``eval_bundle.zip`` unless ``$NANOCHAT_BASE_DIR/eval_bundle``
exists. Offline runs (``integration/runcpu.sh``, the integration tests) write this one instead, so
upstream's own CORE code runs: a ``language_modeling`` task whose context is a short passkey
document and whose continuation is its key (exact match of every continuation token). Its CORE
number is this one task's centred accuracy, not upstream's CORE: the recipe says so.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .tasks import make_passkey

LABEL = "local_passkey"


def write_core_bundle(base_dir: str | Path, *, examples: int = 16, max_chars: int = 400, seed: int = 77) -> Path:
    """``base_dir/eval_bundle`` with ``core.yaml``, ``eval_meta_data.csv`` and one JSONL task; returns it."""
    root = Path(base_dir) / "eval_bundle"
    (root / "eval_data").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(examples):
        rng = np.random.default_rng([seed, i])
        doc = make_passkey(rng, num_chars=int(rng.integers(150, max_chars)), depth=float(rng.uniform(0, 1)))
        rows.append(json.dumps({"context": doc.prompt, "continuation": doc.answer}))
    (root / "eval_data" / f"{LABEL}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "core.yaml").write_text(f"icl_tasks:\n- label: {LABEL}\n  icl_task_type: language_modeling\n"
                                    f"  dataset_uri: {LABEL}.jsonl\n  num_fewshot: [0]\n"
                                    f"  continuation_delimiter: ' '\n")
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Random baseline"])
        writer.writerow([LABEL, 0])
    return root
