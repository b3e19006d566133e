"""A real crash test of the disk tree: a child process appends a deterministic token stream in a
loop and reports each committed count; the parent SIGKILLs it at random moments (seeded). After
every kill the tree must reopen, hold a prefix of the stream at least as long as the last
acknowledged append, and have exactly the gists that ``build_levels`` makes from that prefix.

The child runs this very module (``child_main``), so both sides share the stream definition.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from megacontext_plugin.tree import DiskTree, build_levels, mean_pool_gist

K, D, VOCAB = 4, 8, 1000
WTE = torch.randn(VOCAB, D, generator=torch.Generator().manual_seed(7))
CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from test_tree_disk_crash import child_main; child_main(*sys.argv[2:])"
)


def embed(ids: torch.Tensor) -> torch.Tensor:
    return WTE[ids]


def stream(start: int, n: int) -> torch.Tensor:
    """Tokens ``[start, start + n)`` of the deterministic stream."""
    return (torch.arange(start, start + n) * 7919 + 13) % VOCAB


def child_main(path: str, seed: str, policy: str) -> None:
    """Append chunks forever (small ones, as in inference, and bulk ones); print each commit."""
    tree = DiskTree(path, K, D, embed, mean_pool_gist, fsync=policy, fsync_interval_s=0.01)  # type: ignore[arg-type]
    rng = random.Random(int(seed))
    start = tree.num_tokens
    print("ready", start, flush=True)
    while True:
        n = rng.randint(1, 64) if rng.random() < 0.8 else rng.randint(500, 6000)
        tree.append(stream(start, n))
        start += n
        print(start, flush=True)  # printed only after append returned: committed


def check_prefix(path: Path, acknowledged: int) -> int:
    tree = DiskTree(path, K, D, embed, mean_pool_gist, fsync="never")
    total = tree.num_tokens
    assert total >= acknowledged, f"lost committed tokens: reopened {total} < acknowledged {acknowledged}"
    assert torch.equal(tree.token_ids(0, total), stream(0, total))
    reference = build_levels(embed(stream(0, total))[None], K, mean_pool_gist)
    assert tree.num_levels == (len(reference) if total else 0)
    for level in range(1, tree.num_levels):
        assert torch.equal(tree.level_slice(level, 0, tree.level_size(level)), reference[level][0])
    tree.close()
    return total


def run_and_kill(path: Path, seed: int, policy: str, delay_s: float, after_ready: bool) -> tuple[int, str]:
    """Start a child, SIGKILL it ``delay_s`` after it is ready (or after start); return the last
    count it acknowledged and its stderr."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), str(path), str(seed), policy],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    lines: list[str] = []
    ready = threading.Event()

    def read_stdout() -> None:
        for line in child.stdout:  # type: ignore[union-attr]
            lines.append(line)
            ready.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    if after_ready:
        assert ready.wait(timeout=60), "child never became ready"
    time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    reader.join(timeout=30)
    stderr = child.stderr.read()
    counts = [int(line) for line in lines if not line.startswith("ready")]
    return (counts[-1] if counts else 0), stderr


def test_sigkill_at_random_moments_never_loses_committed_appends(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    path = tmp_path / "tree"
    rounds = [("never", True), ("always", True), ("interval", True), ("never", False), ("always", True)]
    committed = 0
    for seed, (policy, after_ready) in enumerate(rounds):
        delay = rng.uniform(0.0, 0.25) if after_ready else rng.uniform(0.5, 2.5)
        acknowledged, stderr = run_and_kill(path, seed, policy, delay, after_ready)
        assert "Traceback" not in stderr, stderr
        total = check_prefix(path, max(acknowledged, committed))
        committed = total
    assert committed > 0
