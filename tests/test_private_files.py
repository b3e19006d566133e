"""Files that hold a conversation or state derived from one are owner-only (0600 files, 0700 directories)
whatever the umask, and an existing file or directory keeps its mode (never loosened)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from megacontext_plugin.checkpoint import write_state
from megacontext_plugin.inference import InferenceRuntime
from megacontext_plugin.private_files import make_private_dirs
from megacontext_plugin.telemetry import TelemetryEvent
from megacontext_plugin.telemetry.providers import JsonlTelemetryProvider
from megacontext_plugin.tree import open_tree


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    """A umask that would leave new files readable by everyone (the common 022)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in [root, *root.rglob("*")]}


def _tree(path: Path, dim: int = 8):  # type: ignore[no-untyped-def]
    return open_tree("disk", block_size=4, dim=dim, embed_fn=lambda ids: torch.ones(len(ids), dim),
                     gist_fn=lambda children: children.mean(dim=1), path=path, fsync="never")


def test_a_disk_tree_is_created_owner_only_every_file_and_directory(tmp_path: Path) -> None:
    root = tmp_path / "megacontext" / "trees" / "notes"
    tree = _tree(root)
    tree.append(torch.arange(40))  # level files up to level 2, manifest replaced at each commit
    tree.close()
    modes = _modes_under(root)
    assert {"lod0.ids", "lod1.gists", "lod2.gists", "manifest.json"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if name != "."} == {
        name: 0o600 for name in modes if name != "."}
    assert modes["."] == 0o700
    assert _mode(tmp_path / "megacontext") == 0o700 and _mode(tmp_path / "megacontext" / "trees") == 0o700


def test_an_existing_tree_keeps_the_modes_its_owner_chose(tmp_path: Path) -> None:
    root = tmp_path / "shared-with-group"
    tree = _tree(root)
    tree.append(torch.arange(8))
    tree.close()
    os.chmod(root, 0o750)
    os.chmod(root / "manifest.json", 0o640)
    os.chmod(root / "lod0.ids", 0o640)
    tree = _tree(root)
    tree.append(torch.arange(40))  # new commits, and a new level file (level 2)
    tree.close()
    modes = _modes_under(root)
    assert modes["."] == 0o750 and modes["manifest.json"] == 0o640 and modes["lod0.ids"] == 0o640
    assert modes["lod2.gists"] == 0o600  # what this run created is owner-only


def test_make_private_dirs_leaves_existing_directories_alone(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    made = make_private_dirs(tmp_path / "open" / "a" / "b")
    assert made.is_dir()
    assert _mode(tmp_path / "open") == 0o755
    assert _mode(tmp_path / "open" / "a") == 0o700 and _mode(made) == 0o700


def test_telemetry_runs_are_owner_only_including_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "telemetry" / "chat-run" / "telemetry.jsonl"
    provider = JsonlTelemetryProvider(path, max_bytes=200, backups=2)
    for step in range(20):
        timing = {"step": step, "build_ms": 1.0, "lens_ms": 1.0, "positional_ms": 1.0}
        provider.emit(TelemetryEvent("mc_timing", timing))
    provider.flush()
    provider.close()
    files = sorted(path.parent.iterdir())
    assert len(files) >= 2  # rotated at least once
    assert all(_mode(f) == 0o600 for f in files), {f.name: oct(_mode(f)) for f in files}
    assert _mode(path.parent) == 0o700 and _mode(tmp_path / "telemetry") == 0o700


def test_megacontext_state_beside_a_checkpoint_is_owner_only_and_a_replaced_one_keeps_its_mode(
        tmp_path: Path) -> None:
    path = tmp_path / "base_checkpoints" / "d4" / "megacontext_000010.pt"
    write_state(path, {"step": 10, "weights": torch.zeros(3)})
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    os.chmod(path, 0o400)
    write_state(path, {"step": 10, "weights": torch.ones(3)})  # a resume saving the same step again
    assert _mode(path) == 0o400
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))


def test_unnamed_and_named_disk_sessions_live_in_owner_only_directories(tmp_path: Path) -> None:
    from inference_support import FakeEngine, build, prompt

    trees = tmp_path / "base" / "megacontext" / "trees"
    for name in ("", "diary"):
        model, controller, _ = build(["--mc_tree", "disk", "--mc_tree_dir", str(trees), "--mc_session", name])
        runtime = InferenceRuntime(controller.nets)
        stream = runtime.generate(FakeEngine(model), prompt(300), max_tokens=4, temperature=0.0)
        assert stream is not None
        list(stream)
        session = runtime.last_session
        assert session is not None and session.path is not None
        modes = _modes_under(session.path)
        assert modes.pop(".") == 0o700 and set(modes.values()) == {0o600}, modes
        runtime.close()
        controller.close()
    assert _mode(trees) == 0o700 and _mode(trees.parent) == 0o700
