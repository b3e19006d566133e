"""Shared fixtures. Tests that need upstream nanochat skip with a reason unless NANOCHAT_DIR is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def nanochat_dir() -> Path:
    raw = os.environ.get("NANOCHAT_DIR", "")
    if not raw:
        pytest.skip("NANOCHAT_DIR is not set: point it at an extract of nanochat a91743c (see README, Development)")
    path = Path(raw)
    if not (path / "nanochat" / "gpt.py").is_file():
        pytest.fail(f"NANOCHAT_DIR={raw} does not look like a nanochat tree (no nanochat/gpt.py)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_nanochat_base_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """In-process runs write telemetry under $NANOCHAT_BASE_DIR: never into the user's ~/.cache."""
    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(tmp_path_factory.mktemp("nanochat-base"))
    yield
    if old is None:
        os.environ.pop("NANOCHAT_BASE_DIR", None)
    else:
        os.environ["NANOCHAT_BASE_DIR"] = old
