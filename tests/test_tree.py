"""Unit tests of the MegaContext tree: queries, the factory, the fsync policy, failure
atomicity, and every error a user can meet (each a ``TreeError`` with a helpful message)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from megacontext_plugin.tree import (
    DiskTree,
    MCTree,
    RamTree,
    TreeError,
    build_levels,
    mean_pool_gist,
    open_tree,
)
from megacontext_plugin.tree import disk as disk_module

K, D, VOCAB = 4, 8, 97
WTE = torch.randn(VOCAB, D, generator=torch.Generator().manual_seed(0))


def embed(ids: torch.Tensor) -> torch.Tensor:
    return WTE[ids]


def stream(n: int, start: int = 0) -> torch.Tensor:
    return (torch.arange(start, start + n) * 31 + 7) % VOCAB


def make(kind: str, tmp_path: Path, **kwargs: object) -> MCTree:
    path = tmp_path / "tree" if kind == "disk" else None
    return open_tree(kind, block_size=K, dim=D, embed_fn=embed, gist_fn=mean_pool_gist, path=path, **kwargs)


def levels_of(tree: MCTree) -> list[torch.Tensor]:
    return [tree.level_slice(k, 0, tree.level_size(k)) for k in range(1, tree.num_levels)]


@pytest.fixture(params=["ram", "disk"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


# ---- queries ------------------------------------------------------------------------------------
def test_queries_match_geometry_and_reference(kind: str, tmp_path: Path) -> None:
    tree = make(kind, tmp_path)
    assert isinstance(tree, MCTree)
    assert (tree.num_tokens, tree.num_levels) == (0, 0)
    ids = stream(70)
    tree.append(ids[:3])
    tree.append(ids[3:])
    assert tree.num_tokens == 70
    assert tree.num_levels == 4  # 70 // 64 == 1
    assert [tree.level_size(k) for k in range(5)] == [70, 17, 4, 1, 0]
    assert torch.equal(tree.token_ids(5, 9), ids[5:9])
    assert tree.token_ids(5, 9).dtype == torch.int64
    reference = build_levels(embed(ids)[None], K, mean_pool_gist)
    for level in range(1, 4):
        assert torch.equal(tree.level_slice(level, 0, tree.level_size(level)), reference[level][0])
    picked = torch.tensor([16, 0, 3, 3])
    assert torch.equal(tree.embeddings(1, picked), reference[1][0][picked])
    assert torch.equal(tree.embeddings(0, picked), embed(ids[picked]))
    assert torch.equal(tree.level_slice(0, 60, 70), embed(ids[60:70]))
    assert tree.level_slice(2, 1, 1).shape == (0, D)
    assert tree.embeddings(3, torch.tensor([], dtype=torch.int64)).shape == (0, D)
    assert tree.node_span(2, 3) == (48, 64)
    assert tree.parent(0, 69) == (1, 17)  # the parent of a tail token does not exist yet
    assert tree.children(3, 0) == (2, range(0, 4))
    tree.close()


def test_numpy_and_tensor_integers_are_accepted_as_indices(kind: str, tmp_path: Path) -> None:
    tree = make(kind, tmp_path)
    tree.append(stream(20))
    assert tree.node_span(np.int64(1), np.int32(2)) == (8, 12)
    assert tree.parent(torch.tensor(0), torch.tensor(7)) == (1, 1)
    assert torch.equal(tree.token_ids(np.int64(2), np.int64(4)), stream(20)[2:4])
    with pytest.raises(TreeError, match="level must be an int, got bool"):
        tree.level_size(True)
    tree.close()


def test_returned_vectors_are_copies(kind: str, tmp_path: Path) -> None:
    tree = make(kind, tmp_path)
    tree.append(stream(64))
    before = tree.level_slice(1, 0, 16).clone()
    tree.level_slice(1, 0, 16).zero_()
    tree.embeddings(1, torch.arange(16)).zero_()
    assert torch.equal(tree.level_slice(1, 0, 16), before)
    tree.close()


def test_given_embeddings_are_used_instead_of_embed_fn(tmp_path: Path) -> None:
    calls = []

    def counting_embed(ids: torch.Tensor) -> torch.Tensor:
        calls.append(ids.numel())
        return embed(ids)

    tree = RamTree(K, D, counting_embed, mean_pool_gist)
    ids = stream(16)
    given = embed(ids) * 2
    tree.append(ids, embeddings=given)
    assert calls == []
    assert torch.allclose(tree.level_slice(1, 0, 4), given.reshape(4, K, D).mean(1))


def test_gist_version_is_stored_and_exposed(tmp_path: Path) -> None:
    path = tmp_path / "tree"
    tree = DiskTree(path, K, D, embed, mean_pool_gist, gist_version=3)
    tree.append(stream(9))
    tree.close()
    reopened = DiskTree(path, K, D, embed, mean_pool_gist)
    assert reopened.gist_version == 3
    assert json.loads((path / "manifest.json").read_text())["gist_version"] == 3
    reopened.close()
    assert RamTree(K, D, embed, mean_pool_gist, gist_version=5).gist_version == 5


def test_close_twice_is_harmless_and_context_manager_closes(tmp_path: Path) -> None:
    with DiskTree(tmp_path / "tree", K, D, embed, mean_pool_gist) as tree:
        tree.append(stream(5))
    tree.close()
    with pytest.raises(TreeError, match="closed"):
        _ = tree.num_tokens
    with DiskTree(tmp_path / "tree", K, D, embed, mean_pool_gist) as again:  # the lock was released
        assert again.num_tokens == 5


# ---- the factory --------------------------------------------------------------------------------
def test_unknown_kind_names_allowed_values() -> None:
    with pytest.raises(TreeError, match=r"unknown tree kind 'sqlite': expected one of 'ram', 'disk'"):
        open_tree("sqlite", block_size=K, dim=D, embed_fn=embed, gist_fn=mean_pool_gist)


def test_factory_path_rules(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match="path= is only for kind='disk'"):
        open_tree("ram", block_size=K, dim=D, embed_fn=embed, gist_fn=mean_pool_gist, path=tmp_path)
    with pytest.raises(TreeError, match="needs path="):
        open_tree("disk", block_size=K, dim=D, embed_fn=embed, gist_fn=mean_pool_gist)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 3}, "power of two"),
        ({"block_size": 1}, "power of two"),
        ({"dim": 0}, "dim must be a positive int"),
        ({"dtype": torch.float64}, "unsupported gist dtype.*float32, bfloat16, float16"),
        ({"gist_version": -1}, "gist_version"),
    ],
)
def test_bad_constructor_arguments(kind: str, tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"block_size": K, "dim": D, "embed_fn": embed, "gist_fn": mean_pool_gist, **kwargs}
    path = tmp_path / "tree" if kind == "disk" else None
    with pytest.raises(TreeError, match=message):
        open_tree(kind, path=path, **args)


def test_unknown_fsync_policy(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match="unknown fsync policy 'sometimes'"):
        DiskTree(tmp_path / "tree", K, D, embed, mean_pool_gist, fsync="sometimes")  # type: ignore[arg-type]


# ---- bad arguments ------------------------------------------------------------------------------
def test_bad_append_inputs(kind: str, tmp_path: Path) -> None:
    tree = make(kind, tmp_path)
    with pytest.raises(TreeError, match="1-D integer tensor"):
        tree.append(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TreeError, match=r"integer tensor, got dtype torch.float32"):
        tree.append(torch.zeros(3))
    with pytest.raises(TreeError, match="1-D integer tensor"):
        tree.append([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TreeError, match=r"token ids must lie in \[0, 2147483647\], got \[-1, 2\]"):
        tree.append(torch.tensor([-1, 2]))
    with pytest.raises(TreeError, match="token ids must lie"):
        tree.append(torch.tensor([2**31]))
    with pytest.raises(TreeError, match=rf"embeddings must have shape \(3, {D}\)"):
        tree.append(stream(3), embeddings=torch.zeros(3, D + 1))
    with pytest.raises(TreeError, match="embeddings must be floating point"):
        tree.append(stream(3), embeddings=torch.zeros(3, D, dtype=torch.int64))
    assert tree.num_tokens == 0
    tree.close()


def test_bad_callables_are_reported(tmp_path: Path) -> None:
    tree = RamTree(K, D, lambda ids: torch.zeros(ids.numel(), D + 1), mean_pool_gist)
    with pytest.raises(TreeError, match=rf"embed_fn returned \(3, {D + 1}\), expected shape \(3, {D}\)"):
        tree.append(stream(3))
    tree = RamTree(K, D, embed, lambda children: children.sum(dim=2))
    with pytest.raises(TreeError, match=rf"gist_fn returned \(1, {K}\), expected shape \(1, {D}\)"):
        tree.append(stream(4))
    assert tree.num_tokens == 0


def test_out_of_range_queries(kind: str, tmp_path: Path) -> None:
    tree = make(kind, tmp_path)
    tree.append(stream(20))  # levels: 20, 5, 1
    with pytest.raises(TreeError, match=r"nodes \[0, 21\) out of range at level 0, which has 20 nodes"):
        tree.token_ids(0, 21)
    with pytest.raises(TreeError, match="out of range"):
        tree.token_ids(5, 4)
    with pytest.raises(TreeError, match="out of range at level 3, which has 0 nodes"):
        tree.level_slice(3, 0, 1)
    with pytest.raises(TreeError, match="level must be >= 0"):
        tree.level_slice(-1, 0, 1)
    with pytest.raises(TreeError, match="level must be >= 0"):
        tree.level_size(-2)
    with pytest.raises(TreeError, match=r"indices \[-1, 4\] out of range at level 1, which has 5 nodes"):
        tree.embeddings(1, torch.tensor([4, -1]))
    with pytest.raises(TreeError, match=r"indices \[5, 5\] out of range"):
        tree.embeddings(1, torch.tensor([5]))
    with pytest.raises(TreeError, match=r"integer tensor, got dtype torch.float32"):
        tree.embeddings(1, torch.tensor([1.0]))
    with pytest.raises(TreeError, match="1-D integer tensor"):
        tree.embeddings(1, torch.tensor([[1]]))
    with pytest.raises(TreeError, match="index must be an int"):
        tree.node_span(1, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TreeError, match="out of range at level 2, which has 1 nodes"):
        tree.node_span(2, 1)
    with pytest.raises(TreeError, match="out of range"):
        tree.parent(1, 5)
    with pytest.raises(TreeError, match="level-0 nodes"):
        tree.children(0, 3)
    tree.close()


def test_use_after_close(kind: str, tmp_path: Path) -> None:
    tree = make(kind, tmp_path)
    tree.append(stream(8))
    tree.close()
    calls = [
        lambda: tree.num_tokens,
        lambda: tree.num_levels,
        lambda: tree.level_size(0),
        lambda: tree.append(stream(1)),
        lambda: tree.token_ids(0, 1),
        lambda: tree.embeddings(0, torch.tensor([0])),
        lambda: tree.level_slice(1, 0, 1),
        lambda: tree.node_span(0, 0),
        lambda: tree.parent(0, 0),
        lambda: tree.children(1, 0),
        tree.flush,
    ]
    for call in calls:
        with pytest.raises(TreeError, match="Tree is closed"):
            call()


# ---- disk: foreign, corrupted, mismatched -------------------------------------------------------
def disk_tree(path: Path, **kwargs: object) -> DiskTree:
    args = {"block_size": K, "dim": D, "embed_fn": embed, "gist_fn": mean_pool_gist, **kwargs}
    return DiskTree(path, **args)  # type: ignore[arg-type]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "tree"
    tree = disk_tree(path)
    tree.append(stream(70))
    tree.close()
    return path


def test_foreign_directory_and_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TreeError, match=r"is not a MegaContext tree: no manifest.json, and it holds notes.txt"):
        disk_tree(tmp_path)
    with pytest.raises(TreeError, match="is not a directory"):
        disk_tree(tmp_path / "notes.txt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"name": "something else"}')
    with pytest.raises(TreeError, match=r"is not a MegaContext tree: manifest.json lacks format"):
        disk_tree(tmp_path / "other")


def test_corrupted_manifest(saved: Path) -> None:
    manifest = saved / "manifest.json"
    record = json.loads(manifest.read_text())
    record["num_tokens"] = 1000
    manifest.write_text(json.dumps(record))
    with pytest.raises(TreeError, match=r"corrupted: manifest.json checksum mismatch"):
        disk_tree(saved)
    manifest.write_bytes(b"\x00\x01garbage")
    with pytest.raises(TreeError, match=r"corrupted: manifest.json is not valid JSON"):
        disk_tree(saved)


def test_corrupted_level_headers(saved: Path) -> None:
    level1 = saved / "lod1.gists"
    original = level1.read_bytes()
    level1.write_bytes(b"XXXXXXXX" + original[8:])
    with pytest.raises(TreeError, match=r"corrupted: lod1.gists starts with b'XXXXXXXX'.*not a MegaContext tree"):
        disk_tree(saved)
    header = bytearray(original[:64])
    header[12] = 8  # K
    level1.write_bytes(bytes(header) + original[64:])
    with pytest.raises(TreeError, match=r"corrupted: lod1.gists header says .*\(1, 1, 8, 8, 2\).*\(1, 1, 4, 8, 2\)"):
        disk_tree(saved)
    level1.write_bytes(original[:30])
    with pytest.raises(TreeError, match=r"lod1.gists has a 30-byte header, expected 64"):
        disk_tree(saved)


def test_level_shorter_than_committed(saved: Path) -> None:
    level1 = saved / "lod1.gists"
    data = level1.read_bytes()
    level1.write_bytes(data[: 64 + 10 * D * 4 + 5])
    with pytest.raises(TreeError, match=r"corrupted: lod1.gists holds 10 records, manifest commits 17"):
        disk_tree(saved)
    level1.unlink()
    with pytest.raises(TreeError, match=r"corrupted: lod1.gists is missing, manifest commits 17 records"):
        disk_tree(saved)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 8}, "holds a tree with block_size=4, asked for 8"),
        ({"dim": 16}, "holds a tree with dim=8, asked for 16"),
        ({"dtype": torch.bfloat16}, "holds a tree with dtype=float32, asked for bfloat16"),
        ({"gist_version": 2}, "gists of GistNet version 0, asked for 2"),
    ],
)
def test_reopen_with_other_geometry(saved: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(TreeError, match=message):
        disk_tree(saved, **kwargs)


def test_single_writer(saved: Path) -> None:
    tree = disk_tree(saved)
    with pytest.raises(TreeError, match="already open by another DiskTree"):
        disk_tree(saved)
    tree.close()


def test_stale_manifest_temp_and_torn_tail_are_dropped(saved: Path) -> None:
    reference = disk_tree(saved)
    expected = levels_of(reference)
    reference.close()
    (saved / "manifest.json.tmp").write_text('{"num_tokens": 99999}')
    with (saved / "lod0.ids").open("ab") as f:
        f.write(b"\x01\x02\x03")
    with (saved / "lod2.gists").open("ab") as f:
        f.write(b"\x09" * 40)
    tree = disk_tree(saved)
    assert tree.recovered_bytes == 43
    assert not (saved / "manifest.json.tmp").exists()
    assert tree.num_tokens == 70
    assert all(torch.equal(a, b) for a, b in zip(levels_of(tree), expected, strict=True))
    tree.close()


# ---- failure atomicity and fsync policy ---------------------------------------------------------
def test_failed_append_leaves_tree_unchanged(kind: str, tmp_path: Path) -> None:
    fail = {"now": False}

    def flaky_gist(children: torch.Tensor) -> torch.Tensor:
        if fail["now"] and children.shape[0] > 1:
            raise RuntimeError("gist net exploded")
        return mean_pool_gist(children)

    path = tmp_path / "tree" if kind == "disk" else None
    tree = open_tree(kind, block_size=K, dim=D, embed_fn=embed, gist_fn=flaky_gist, path=path)
    tree.append(stream(30))
    before = levels_of(tree)
    fail["now"] = True
    with pytest.raises(RuntimeError, match="exploded"):
        tree.append(stream(50, start=30))
    fail["now"] = False
    assert tree.num_tokens == 30
    tree.append(stream(50, start=30))
    reference = RamTree(K, D, embed, mean_pool_gist)
    reference.append(stream(80))
    assert all(torch.equal(a, b) for a, b in zip(levels_of(tree), levels_of(reference), strict=True))
    assert before[0].shape[0] == 7
    tree.close()


def test_failed_commit_leaves_disk_tree_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tree"
    tree = disk_tree(path, fsync="never")
    tree.append(stream(30))

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(disk_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        tree.append(stream(100, start=30))
    monkeypatch.undo()
    assert tree.num_tokens == 30
    tree.append(stream(100, start=30))  # overwrites the uncommitted bytes
    tree.close()
    reopened = disk_tree(path)
    reference = RamTree(K, D, embed, mean_pool_gist)
    reference.append(stream(130))
    assert torch.equal(reopened.token_ids(0, 130), stream(130))
    assert all(torch.equal(a, b) for a, b in zip(levels_of(reopened), levels_of(reference), strict=True))
    reopened.close()


@pytest.mark.parametrize(
    ("policy", "on_append", "on_flush"), [("always", True, False), ("never", False, False), ("interval", False, True)]
)
def test_fsync_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, on_append: bool, on_flush: bool
) -> None:
    tree = disk_tree(tmp_path / "tree", fsync=policy, fsync_interval_s=3600.0)
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(disk_module.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    tree.append(stream(40))
    assert bool(calls) == on_append
    calls.clear()
    tree.flush()
    assert bool(calls) == on_flush
    tree.close()


def test_interval_policy_syncs_when_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = disk_tree(tmp_path / "tree", fsync="interval", fsync_interval_s=0.0)
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(disk_module.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    tree.append(stream(40))
    assert calls
    tree.close()


# ---- scale --------------------------------------------------------------------------------------
def rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_million_token_disk_tree_keeps_memory_small(tmp_path: Path) -> None:
    """1M tokens at D=512 write ~300 MiB of gists; the process's peak RSS must not follow."""
    dim, tokens, chunk = 512, 1 << 20, 1 << 14
    wte = torch.randn(1024, dim)
    tree = DiskTree(tmp_path / "tree", 8, dim, lambda ids: wte[ids], mean_pool_gist, fsync="never")
    ids = torch.arange(chunk) % 1024
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    rss_before = rss_mib("VmRSS")
    for _ in range(tokens // chunk):
        tree.append(ids)
    picked = torch.randint(0, tree.level_size(1), (1000,))
    assert tree.embeddings(1, picked).shape == (1000, dim)
    assert tree.embeddings(0, torch.randint(0, tokens, (1000,))).shape == (1000, dim)
    growth_mib = rss_mib("VmHWM") - rss_before
    stored_mib = sum(p.stat().st_size for p in (tmp_path / "tree").iterdir()) / 2**20
    assert stored_mib > 250
    assert growth_mib < 120, f"peak RSS grew by {growth_mib:.0f} MiB for {stored_mib:.0f} MiB stored"
    tree.close()


# ---- disk: damage to the data itself ---------------------------------------------------------------
def _flip(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _big(tmp_path: Path, tokens: int = 20_000) -> Path:
    """A tree whose levels span several checksum chunks (lod0: 16,384 ids per chunk)."""
    path = tmp_path / "big"
    tree = disk_tree(path)
    tree.append(stream(tokens))
    tree.close()
    return path


def test_flipped_token_ids_are_an_error_naming_file_and_offset(tmp_path: Path) -> None:
    path = _big(tmp_path)
    _flip(path / "lod0.ids", 64 + 4 * 100 + 3, 0x80)  # token 100 becomes a negative id
    tree = disk_tree(path)
    assert tree.token_ids(17_000, 17_010).tolist() == stream(20_000)[17_000:17_010].tolist()  # another chunk
    with pytest.raises(TreeError, match=r"lod0.ids bytes 64-65600 \(records 0-16384\) fail their checksum"):
        tree.token_ids(90, 110)
    with pytest.raises(TreeError, match=r"lod0\.ids bytes 64-65600"):
        tree.embeddings(0, torch.tensor([5]))
    tree.close()


def test_flipped_gist_bits_are_an_error(tmp_path: Path) -> None:
    path = _big(tmp_path)
    _flip(path / "lod1.gists", 64 + 4 * D * 10 + 1)  # a bit of gist 10
    tree = disk_tree(path)
    with pytest.raises(TreeError, match=r"lod1.gists bytes .* fail their checksum"):
        tree.embeddings(1, torch.tensor([10]))
    with pytest.raises(TreeError, match=r"lod1.gists bytes .* fail their checksum"):
        tree.level_slice(1, 0, 20)
    assert tree.embeddings(2, torch.tensor([0])).shape == (1, D)  # other levels are intact
    tree.close()


def test_a_flipped_id_in_the_open_tail_fails_the_reopen_cleanly(saved: Path) -> None:
    # 70 tokens with K = 4: tokens 68, 69 are the incomplete block rebuilt on reopen
    _flip(saved / "lod0.ids", 64 + 4 * 69 + 3, 0x80)
    with pytest.raises(TreeError, match=r"lod0.ids bytes .* fail their checksum"):
        disk_tree(saved)


def test_a_version_1_tree_is_checksummed_on_open(saved: Path) -> None:
    manifest = json.loads((saved / "manifest.json").read_text())
    fields = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "checksum", "tail_crcs")}
    record = {"format": "megacontext-tree", "format_version": 1, **fields}
    record["checksum"] = disk_module._manifest_checksum(record)
    (saved / "manifest.json").write_text(json.dumps(record, sort_keys=True) + "\n")
    for crc in saved.glob("*.crc"):
        crc.unlink()
    tree = disk_tree(saved)
    assert tree.token_ids(0, 70).tolist() == stream(70).tolist()
    tree.close()
    upgraded = json.loads((saved / "manifest.json").read_text())
    assert upgraded["format_version"] == disk_module.FORMAT_VERSION and len(upgraded["tail_crcs"]) == 4
    assert sorted(p.name for p in saved.glob("*.crc")) == ["lod0.crc", "lod1.crc", "lod2.crc", "lod3.crc"]
    _flip(saved / "lod1.gists", 64 + 3)  # and now damage is caught
    with pytest.raises(TreeError, match="fail their checksum"):
        disk_tree(saved).embeddings(1, torch.tensor([0]))
