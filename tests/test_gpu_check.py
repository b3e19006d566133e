"""integration/gpu_check.sh: its --cpu mode (what CI can run) against upstream nanochat prints the one table with
every row, and its mistakes are one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "integration" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="gpu_check.sh is a bash script")


def test_unknown_argument_is_one_line() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "gpu_check: error: unknown argument '--gpu' (expected --cpu or --wheels DIR)\n"


@pytest.mark.upstream("pin")  # gpu_check.sh runs the pin's scripts
@pytest.mark.integration
def test_cpu_mode_prints_the_table_with_every_row(nanochat_dir: Path, tmp_path: Path) -> None:
    for module in ("rustbpe", "tokenizers", "psutil", "pyarrow", "filelock"):
        pytest.importorskip(module, reason=f"upstream's scripts need {module}")
    env = {**os.environ, "PYTHON": sys.executable, "NANOCHAT_DIR": str(nanochat_dir),
           "MC_GPU_CHECK_DIR": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1].strip() == "check" and "graphs/breaks/recompiles" in table[0]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[1:-1]]
            for line in table[1:]}
    vanilla = rows[("base_train d2 vanilla", "python")]
    mc = rows[("base_train d2 --mc", "python")]
    for row in (vanilla, mc):
        assert row[-1] == "ok" and int(row[2]) >= 1 and int(row[3].replace(",", "")) > 0  # steps, tok/s
        assert row[7].endswith("(RSS)")  # peak memory, measured
    assert rows[("base_train d2 --mc", "torchrun --nproc_per_node=1")][-1].startswith("skipped on CPU")
    (chat,) = [row for key, row in rows.items() if key[0].startswith("chat_cli --mc, prompt 10x window")]
    assert chat[-1] == "ok"
    stored = int(chat[0].split("(")[1].split()[0].replace(",", ""))
    assert stored >= 10 * 256  # the whole prompt went into the session: past the window, over MegaContext
    assert len(table) == 5  # header and four rows: one table
