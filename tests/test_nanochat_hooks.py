"""The hook patch inside real nanochat (needs NANOCHAT_DIR): off = upstream's numbers, on = MC trains."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megacontext_plugin import nanochat_patch

pytestmark = pytest.mark.integration
STEPS = Path(__file__).with_name("nanochat_gpt_steps.py")


def _run(tree: Path, mode: str, plugins: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "NANOCHAT_PLUGINS"} | {"PYTHONPATH": str(tree)}
    if plugins is not None:
        env["NANOCHAT_PLUGINS"] = plugins
    proc = subprocess.run([sys.executable, str(STEPS), mode], env=env, cwd=tree, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


@pytest.fixture
def patched(nanochat_dir: Path, tmp_path: Path) -> Path:
    pytest.importorskip("filelock", reason="upstream nanochat.common imports filelock")
    tree = tmp_path / "nanochat"
    shutil.copytree(nanochat_dir, tree)
    nanochat_patch.apply(tree)
    return tree


def _losses(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("loss ")]


def test_without_mc_the_patched_forward_gives_upstreams_losses(nanochat_dir: Path, patched: Path) -> None:
    pristine = _losses(_run(nanochat_dir, "off", None))
    assert len(pristine) == 3
    assert _losses(_run(patched, "off", "none")) == pristine  # no plugin allowed
    installed = _run(patched, "off", None)  # plugin installed and loaded, --mc absent
    assert "hooks True" in installed
    assert _losses(installed) == pristine


def test_with_mc_the_patched_forward_trains_through_the_plugin(patched: Path) -> None:
    lines = _run(patched, "mc", "megacontext")
    losses = [float(line.split()[1]) for line in _losses(lines)]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    telemetry = next(line for line in lines if line.startswith("telemetry "))
    for key in ("mc/token_loss", "mc/lens_loss", "mc/lod0_loss", "mc/time_controller_ms"):
        assert key in telemetry.split()
