"""nanochat's chat CLI with --mc (needs NANOCHAT_DIR): a prompt of 12x the window answers with its latency
and level map, and a named disk session continues in the next process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_nanochat_hooks import MC, _base_train, _env, base_dir, patched  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration
SEQUENCE_LEN = 256  # BASE_TRAIN's --max-seq-len
WORDS = ("the river keeps a quiet ledger of every stone it has carried down from the hills, and the miller "
         "reads it aloud to anyone who asks about the weather, the harvest or the number seven ")


def _chat(tree: Path, base: Path, prompt: str, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "scripts.chat_cli", "-i", "base", "--device-type", "cpu", "-d", "float32",
           "-t", "0", "-p", prompt, *MC, *flags]
    return subprocess.run(cmd, cwd=tree, env=_env(tree, base, None), capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.upstream("pin")  # uses the pin's chat_cli flags (-d); master's chat_cli has other flags
def test_chat_cli_answers_a_prompt_twelve_windows_long_and_a_named_session_continues(
        patched: Path, base_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    _base_train(patched, base_dir, None, MC)
    prompt = WORDS * 36  # about 3,200 tokens with the 512-token vocabulary: 12.6 x the 256-token window
    plain = _chat(patched, base_dir, prompt)
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-3000:]
    assert "Assistant:" in plain.stdout and "Traceback" not in plain.stderr
    assert "GistNet and LensNet loaded from" in plain.stdout  # the aux nets trained with the base model
    # the interactive smoke: latency after the answer and, past the window, the level map it was decoded from
    latency = re.search(r"^megacontext: (\d+)-token prompt, over MegaContext: first token [\d.]+ s, (\d+) tokens?",
                        plain.stdout, flags=re.M)
    assert latency and int(latency.group(1)) > 11 * SEQUENCE_LEN, plain.stdout[-2000:]
    level_map = re.search(r"^megacontext: level map: (\d+) tokens in \d+/\d+ entries \| L0: \d+ raw.*L[1-9]: \d+ gists"
                          r".*\n\s+\[[.1-9+]+\]$", plain.stdout, flags=re.M)
    assert level_map and int(level_map.group(1)) == int(latency.group(1)) + int(latency.group(2)), plain.stdout[-2000:]

    session = ["--mc_tree", "disk", "--mc_tree_dir", str(tmp_path / "trees"), "--mc_session", "notes"]
    first = _chat(patched, base_dir, prompt, *session)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "session 'notes'" in first.stdout and ": 0 tokens of history" in first.stdout
    second = _chat(patched, base_dir, "and what about the miller?", *session)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    stored = int(re.search(r"session 'notes' \(disk, [^)]*\): (\d+) tokens of history", second.stdout).group(1))
    assert stored > 11 * SEQUENCE_LEN  # the first process's prompt and answer, reopened from disk
