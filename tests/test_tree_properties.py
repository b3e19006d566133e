"""Property tests of the MegaContext tree (hypothesis): chunking invariance, geometry,
``disk == ram``, ``build_levels == incremental``, recovery from torn writes, dtype round-trips."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext_plugin.tree import DiskTree, MCTree, RamTree, build_levels, mean_pool_gist

D, VOCAB = 8, 97
WTE = torch.randn(VOCAB, D, generator=torch.Generator().manual_seed(1))
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SETTINGS = settings(max_examples=100, deadline=None)

block_sizes = st.sampled_from([2, 4, 8])
dtypes = st.sampled_from(DTYPES)
chunk_lists = st.lists(st.integers(1, 90), max_size=10)


def embed(ids: torch.Tensor) -> torch.Tensor:
    return WTE[ids]


def stream(n: int, start: int = 0) -> torch.Tensor:
    return (torch.arange(start, start + n) * 31 + 7) % VOCAB


def ram(block_size: int, dtype: torch.dtype = torch.float32) -> RamTree:
    return RamTree(block_size, D, embed, mean_pool_gist, dtype=dtype)


def disk(path: Path, block_size: int, dtype: torch.dtype = torch.float32) -> DiskTree:
    return DiskTree(path, block_size, D, embed, mean_pool_gist, dtype=dtype, fsync="never")


def append_chunks(tree: MCTree, chunks: list[int], start: int = 0) -> int:
    for n in chunks:
        tree.append(stream(n, start))
        start += n
    return start


def assert_same_tree(a: MCTree, b: MCTree) -> None:
    assert a.num_tokens == b.num_tokens
    assert a.num_levels == b.num_levels
    assert torch.equal(a.token_ids(0, a.num_tokens), b.token_ids(0, b.num_tokens))
    for level in range(1, a.num_levels):
        size = a.level_size(level)
        assert size == b.level_size(level)
        left, right = a.level_slice(level, 0, size), b.level_slice(level, 0, size)
        assert left.dtype == right.dtype
        assert torch.equal(left, right), f"level {level} differs"


def cuts_to_chunks(total: int, cuts: list[int]) -> list[int]:
    points = [0, *sorted(cuts), total]
    return [b - a for a, b in itertools.pairwise(points) if b > a]


@SETTINGS
@given(block_size=block_sizes, dtype=dtypes, total=st.integers(0, 600), data=st.data())
def test_any_chunking_gives_the_same_tree_as_build_levels(
    block_size: int, dtype: torch.dtype, total: int, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, total), max_size=12))
    with_embeddings = data.draw(st.booleans())
    chunked, whole = ram(block_size, dtype), ram(block_size, dtype)
    start = 0
    for n in cuts_to_chunks(total, cuts):
        ids = stream(n, start)
        chunked.append(ids, embeddings=embed(ids) if with_embeddings else None)
        start += n
    whole.append(stream(total))
    assert_same_tree(chunked, whole)

    assert [chunked.level_size(k) for k in range(6)] == [total // block_size**k for k in range(6)]
    expected_levels = next(k for k in range(12) if total // block_size**k == 0)
    assert chunked.num_levels == expected_levels
    reference = build_levels(embed(stream(total))[None], block_size, mean_pool_gist, dtype=dtype)
    assert len(reference) == max(expected_levels, 1)
    for level in range(1, chunked.num_levels):
        assert torch.equal(chunked.level_slice(level, 0, chunked.level_size(level)), reference[level][0])


@SETTINGS
@given(block_size=block_sizes, rows=st.integers(1, 3), length=st.integers(0, 300), max_level=st.integers(0, 4))
def test_build_levels_batches_rows_independently(block_size: int, rows: int, length: int, max_level: int) -> None:
    ids_BT = torch.stack([stream(length, start=17 * b) for b in range(rows)])
    levels = build_levels(embed(ids_BT), block_size, mean_pool_gist, max_level=max_level)
    assert len(levels) <= max_level + 1
    for level, nodes_BND in enumerate(levels):
        assert nodes_BND.shape == (rows, length // block_size**level, D)
    for b in range(rows):
        tree = ram(block_size)
        tree.append(ids_BT[b])
        for level in range(1, len(levels)):
            assert torch.equal(levels[level][b], tree.level_slice(level, 0, tree.level_size(level)))


@SETTINGS
@given(block_size=block_sizes, total=st.integers(0, 400))
def test_spans_tile_and_parents_match_children(block_size: int, total: int) -> None:
    tree = ram(block_size)
    tree.append(stream(total))
    for level in range(tree.num_levels):
        width = block_size**level
        size = tree.level_size(level)
        spans = [tree.node_span(level, i) for i in range(size)]
        assert [s for s, _ in spans] == [i * width for i in range(size)]
        assert all(e - s == width for s, e in spans)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(size - 1))
        assert 0 <= total - size * width < width  # what the level leaves uncovered is < one node
        for i in range(size):
            assert tree.parent(level, i) == (level + 1, i // block_size)
            if level == 0:
                continue
            child_level, kids = tree.children(level, i)
            assert child_level == level - 1 and len(kids) == block_size
            assert kids[-1] < tree.level_size(child_level)  # a complete node's children all exist
            assert all(tree.parent(child_level, c) == (level, i) for c in kids)
            assert tree.node_span(child_level, kids[0])[0] == spans[i][0]
            assert tree.node_span(child_level, kids[-1])[1] == spans[i][1]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 120)),
        st.tuples(st.just("append_embedded"), st.integers(1, 120)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=10,
)


@SETTINGS
@given(block_size=block_sizes, dtype=dtypes, ops=operations)
def test_disk_equals_ram_across_appends_and_reopens(
    block_size: int, dtype: torch.dtype, ops: list[tuple[str, int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tree"
        on_disk, in_ram = disk(path, block_size, dtype), ram(block_size, dtype)
        start = 0
        for op, n in ops:
            if op == "reopen":
                on_disk.close()
                on_disk = disk(path, block_size, dtype)
                assert on_disk.recovered_bytes == 0
            else:
                ids = stream(n, start)
                given_embeddings = embed(ids) if op == "append_embedded" else None
                on_disk.append(ids, embeddings=given_embeddings)
                in_ram.append(ids, embeddings=given_embeddings)
                start += n
            assert_same_tree(on_disk, in_ram)
        picked = torch.randint(0, max(start, 1), (7,)) if start else torch.empty(0, dtype=torch.int64)
        assert torch.equal(on_disk.embeddings(0, picked), in_ram.embeddings(0, picked))
        if on_disk.num_levels > 1:
            picked = torch.randint(0, on_disk.level_size(1), (7,))
            assert torch.equal(on_disk.embeddings(1, picked), in_ram.embeddings(1, picked))
        on_disk.close()


@SETTINGS
@given(
    block_size=block_sizes,
    dtype=dtypes,
    chunks=chunk_lists,
    junk=st.lists(st.tuples(st.integers(0, 5), st.binary(min_size=1, max_size=70)), max_size=4),
    stale_manifest=st.booleans(),
    more=chunk_lists,
)
def test_torn_tails_are_dropped_on_reopen(
    block_size: int,
    dtype: torch.dtype,
    chunks: list[int],
    junk: list[tuple[int, bytes]],
    stale_manifest: bool,
    more: list[int],
) -> None:
    """Bytes past the committed counts (a torn or uncommitted write) never read back as data."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tree"
        tree = disk(path, block_size, dtype)
        total = append_chunks(tree, chunks)
        committed_levels = tree.num_levels
        tree.close()
        torn = 0
        for level, garbage in junk:
            name = "lod0.ids" if level == 0 else f"lod{level}.gists"
            with (path / name).open("ab") as f:  # creates uncommitted level files too
                f.write(garbage)
            torn += len(garbage) if level < committed_levels else 0
        if stale_manifest:
            (path / "manifest.json.tmp").write_bytes(b'{"num_tokens": 123456')
        reopened = disk(path, block_size, dtype)
        assert reopened.recovered_bytes == torn
        reference = ram(block_size, dtype)
        append_chunks(reference, chunks)
        assert_same_tree(reopened, reference)
        append_chunks(reopened, more, start=total)
        append_chunks(reference, more, start=total)
        assert_same_tree(reopened, reference)
        reopened.close()


@SETTINGS
@given(
    block_size=block_sizes,
    dtype=dtypes,
    before=chunk_lists,
    lost=chunk_lists,
    tear=st.integers(0, 3),
    after=chunk_lists,
)
def test_interrupted_appends_reopen_to_the_committed_prefix(
    block_size: int, dtype: torch.dtype, before: list[int], lost: list[int], tear: int, after: list[int]
) -> None:
    """A crash after level data was written but before the manifest commit: the reopened tree is
    exactly the last committed prefix (also when a level file was cut mid-record past it)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tree"
        tree = disk(path, block_size, dtype)
        committed = append_chunks(tree, before)
        manifest = (path / "manifest.json").read_bytes()
        written = append_chunks(tree, lost, start=committed)
        tree.close()
        (path / "manifest.json").write_bytes(manifest)  # the later commits never happened
        if tear and written > committed:
            level_file = path / "lod0.ids"
            level_file.write_bytes(level_file.read_bytes()[:-tear])  # cut mid-record
        reopened = disk(path, block_size, dtype)
        assert reopened.num_tokens == committed
        reference = ram(block_size, dtype)
        append_chunks(reference, before)
        assert_same_tree(reopened, reference)
        append_chunks(reopened, after, start=committed)
        append_chunks(reference, after, start=committed)
        assert_same_tree(reopened, reference)
        reopened.close()


@settings(max_examples=15, deadline=None)
@given(block_size=block_sizes, total=st.integers(1, 300), dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_half_precision_storage_round_trips_bit_exactly(block_size: int, total: int, dtype: torch.dtype) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tree = disk(Path(tmp) / "tree", block_size, dtype)
        tree.append(stream(total))
        tree.close()
        reopened = disk(Path(tmp) / "tree", block_size, dtype)
        reference = build_levels(embed(stream(total))[None], block_size, mean_pool_gist, dtype=dtype)
        for level in range(1, reopened.num_levels):
            stored = reopened.level_slice(level, 0, reopened.level_size(level))
            assert stored.dtype == dtype
            assert torch.equal(stored.view(torch.int16), reference[level][0].view(torch.int16))
        reopened.close()
