"""Shared fixtures. Tests that need upstream nanochat skip with a reason unless NANOCHAT_DIR is set;
with MC_REQUIRE_INTEGRATION=1 (CI's integration run) such a skip is a failure instead. NANOCHAT_DIR may
hold either supported upstream (the pin or master); a test marked ``upstream("pin")`` or
``upstream("master")`` is deselected, not skipped, against the other one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_INTEGRATION = "MC_REQUIRE_INTEGRATION"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: N workers share the cores, so each worker, and every nanochat subprocess it starts
    # (they inherit this environment), computes on one thread instead of all of them fighting over all.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _nanochat_upstream() -> str | None:
    """Which supported upstream NANOCHAT_DIR holds (``pin`` or ``master``), None if unset or unknown."""
    from megacontext_plugin.nanochat_patch import PatchError, detect

    raw = os.environ.get("NANOCHAT_DIR", "")
    try:
        return detect(Path(raw)).name if raw and (Path(raw) / "nanochat" / "gpt.py").is_file() else None
    except PatchError:
        return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests of the other upstream; then the ``slow`` tests first, longest first: under
    ``--dist worksteal`` (pyproject's addopts) each long pole starts at once on a worker of its own while the
    other workers take the rest, instead of starting last and running alone (the README-commands test is
    most of the pin's integration time)."""
    name = _nanochat_upstream()
    if name is not None:
        other = [item for item in items
                 if (m := item.get_closest_marker("upstream")) is not None and m.args[0] != name]
        if other:
            config.hook.pytest_deselected(items=other)
            items[:] = [item for item in items if item not in other]
    items.sort(key=_expected_minutes, reverse=True)


def _expected_minutes(item: pytest.Item) -> float:
    """``slow(minutes=M)``'s M (1 for a bare ``slow``), 0 for the rest: the longest start first."""
    marker = item.get_closest_marker("slow")
    return 0.0 if marker is None else float(marker.kwargs.get("minutes", 1))


@pytest.fixture
def upstream(nanochat_dir: Path) -> str:
    """``pin`` or ``master``: the supported upstream NANOCHAT_DIR holds."""
    from megacontext_plugin.nanochat_patch import detect

    return detect(nanochat_dir).name


@pytest.fixture
def nanochat_dir() -> Path:
    raw = os.environ.get("NANOCHAT_DIR", "")
    if not raw:
        pytest.skip("NANOCHAT_DIR is not set: point it at an extract of nanochat a91743c (the pin) or 92d63d4 "
                    "(master) (see README, Development)")
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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny.pt`` from ``megacontext eval train-tiny`` at its smallest (a few steps, a 1-layer model):
    the end-to-end paths of the evaluation and its benchmark, not its numbers."""
    from megacontext_plugin.cli import main

    out = tmp_path_factory.mktemp("tiny-checkpoint")
    assert main(["eval", "train-tiny", "--out", str(out), "--plain-steps", "3", "--mc-steps", "2",
                 "--plain-len", "128", "--plain-batch", "2", "--mc-len", "256", "--mc-batch", "2",
                 "--mix-batch", "1", "--threads", "1", "--width", "32", "--heads", "2", "--layers", "1",
                 "--mc_train_wc_length", "0.25"]) == 0  # W = 64 of the 256-token window
    return out / "tiny.pt"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Strict mode: an `integration` test that skips (no NANOCHAT_DIR, a missing dependency) fails, so a
    CI run that was meant to exercise upstream nanochat cannot pass green without having run it."""
    report = yield
    if (report.skipped and not hasattr(report, "wasxfail") and os.environ.get(REQUIRE_INTEGRATION) == "1"
            and item.get_closest_marker("integration") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_INTEGRATION}=1 and this integration test skipped: {reason}"
    return report
