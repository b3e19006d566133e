"""The ``disk`` tree backend: one append-only file per level and an atomically replaced manifest.

A tree directory holds (format version 2, little-endian; see docs/tree.md)::

    manifest.json   the commit record: num_tokens, block_size, dim, dtype, gist_version,
                    tail_crcs (CRC32 of each level's last, incomplete chunk), checksum
    lod0.ids        64-byte header, then one int32 token id per token
    lod{k}.gists    64-byte header, then one [D] gist row per level-k node (k >= 1)
    lod{k}.crc      one little-endian uint32 CRC32 per complete chunk of that level's records

Data is checksummed per chunk of ``CHUNK_BYTES`` (whole records): a read verifies the chunks it
touches (once per chunk while the tree is open), so flipped bits in any record, ids or gists,
are a ``TreeError`` naming the file and the byte range, never wrong data. A complete chunk's CRC
is written before the manifest that commits it; the incomplete last chunk's CRC lives in the
manifest itself, so it changes atomically with what it covers. A version 1 tree (no checksums)
is upgraded on open: its data is read once, checksummed and committed as version 2.

An append writes the new records of every level at their committed offsets, fsyncs per policy,
then commits by replacing the manifest (temp file + ``os.replace``). Only what the manifest
commits is data: on open, bytes beyond the committed count are a torn tail and are truncated.
Reads use ``preadv`` straight into the result (a query reads only its records). One writer at a time,
enforced with ``flock`` on the directory. POSIX only. The history is a conversation: the directories
and files a tree creates are owner-only (``private_files``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..private_files import PRIVATE_FILE, make_private_dirs, open_private, replacement_mode
from .building import GIST_DTYPES, TreeBase, dtype_name
from .protocol import EmbedFn, GistFn, TreeError

FsyncPolicy = Literal["always", "interval", "never"]
FSYNC_POLICIES: tuple[str, ...] = ("always", "interval", "never")

FORMAT_VERSION = 2
LEVEL_FORMAT_VERSION = 1
"""Layout of a level file (header + records): unchanged since tree format 1, so a version 1 tree's
level files open as they are."""
UPGRADABLE_VERSIONS = (1,)
"""Older formats that open: version 1 had no data checksums (computed on open)."""
CHUNK_BYTES = 64 * 1024
"""Checksum granularity: a read verifies whole chunks of about this many bytes (whole records)."""
MANIFEST_FORMAT = "megacontext-tree"
MANIFEST_NAME = "manifest.json"
MANIFEST_TMP_NAME = "manifest.json.tmp"
LEVEL_MAGIC = b"MCTLEVEL"
HEADER = struct.Struct("<8sHHIIB")
"""magic, format version, level, block size K, dim D, record dtype code; zero-padded to 64 bytes."""
HEADER_SIZE = 64
RECORD_CODES: dict[str, int] = {"int32": 1, "float32": 2, "bfloat16": 3, "float16": 4}
STORAGE_NUMPY: dict[str, np.dtype[Any]] = {
    "int32": np.dtype("<i4"),
    "float32": np.dtype("<f4"),
    "bfloat16": np.dtype("<i2"),  # numpy has no bfloat16: raw 2-byte words, reinterpreted by torch
    "float16": np.dtype("<f2"),
}


def level_file_name(level: int) -> str:
    return "lod0.ids" if level == 0 else f"lod{level}.gists"


def crc_file_name(level: int) -> str:
    return f"lod{level}.crc"


# ---- manifest ----------------------------------------------------------------------------------
def _manifest_checksum(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return f"crc32:{zlib.crc32(canonical):08x}"


def encode_manifest(fields: dict[str, Any]) -> bytes:
    """One JSON line: ``fields`` plus ``format``, ``format_version`` and a checksum of the rest."""
    record = {"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, **fields}
    record["checksum"] = _manifest_checksum(record)
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def decode_manifest(raw: bytes, where: Path) -> dict[str, Any]:
    """Validate a manifest's format, version, checksum and field types; ``TreeError`` if bad."""
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TreeError(f"{where} is corrupted: {MANIFEST_NAME} is not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
        raise TreeError(f"{where} is not a MegaContext tree: {MANIFEST_NAME} lacks format={MANIFEST_FORMAT!r}")
    stored = record.pop("checksum", None)
    computed = _manifest_checksum(record)
    if stored != computed:
        raise TreeError(
            f"{where} is corrupted: {MANIFEST_NAME} checksum mismatch (stored {stored}, computed {computed})"
        )
    if record.get("format_version") not in (FORMAT_VERSION, *UPGRADABLE_VERSIONS):
        raise TreeError(
            f"{where} has tree format version {record.get('format_version')!r}; "
            f"this megacontext_plugin reads version {FORMAT_VERSION}"
        )
    for key in ("num_tokens", "block_size", "dim", "gist_version"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TreeError(f"{where} is corrupted: {MANIFEST_NAME} field {key}={value!r}")
    if record.get("dtype") not in GIST_DTYPES:
        raise TreeError(f"{where} is corrupted: {MANIFEST_NAME} field dtype={record.get('dtype')!r}")
    if record["format_version"] == FORMAT_VERSION:
        tails = record.get("tail_crcs")
        if not isinstance(tails, list) or not all(isinstance(c, int) and 0 <= c < 2**32 for c in tails):
            raise TreeError(f"{where} is corrupted: {MANIFEST_NAME} field tail_crcs={tails!r}")
    return record


# ---- one level file ----------------------------------------------------------------------------
def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    if data.size == 0:
        return
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class LevelFile:
    """One level's file: a fixed header, then fixed-size records ``[width]`` of ``kind``, with a CRC32
    per chunk of ``chunk_records`` records (``lod{k}.crc`` for complete chunks, ``tail_crc`` for the
    incomplete last one, which the manifest commits).

    Writes use ``pwrite`` and reads ``preadv`` at explicit offsets (never the file position),
    so junk left by a failed append is simply overwritten by the next one, and a query reads
    only the records it returns (and, the first time, the chunks that hold them, to verify them).
    """

    def __init__(self, path: Path, fd: int, kind: str, width: int, crc_fd: int, crc_name: str) -> None:
        self.path = path
        self.fd = fd
        self.crc_fd = crc_fd
        self.crc_name = crc_name
        self.np_dtype = STORAGE_NUMPY[kind]
        self.width = width
        self.record_bytes = self.np_dtype.itemsize * width
        self.chunk_records = max(1, CHUNK_BYTES // self.record_bytes)
        self.committed = 0
        self.crcs: list[int] = []
        """CRC32 of every complete chunk of committed records."""
        self.tail_crc = 0
        """CRC32 of the committed records after the last complete chunk (0 for none)."""
        self._verified: set[int] = set()

    @classmethod
    def create(cls, path: Path, level: int, block_size: int, dim: int, kind: str) -> LevelFile:
        """A new, empty level file (truncating any uncommitted leftover of that name)."""
        fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        crc_fd = open_private(path.with_name(crc_file_name(level)), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        header = HEADER.pack(LEVEL_MAGIC, LEVEL_FORMAT_VERSION, level, block_size, dim, RECORD_CODES[kind])
        _pwrite_all(fd, np.frombuffer(header.ljust(HEADER_SIZE, b"\0"), dtype=np.uint8), 0)
        return cls(path, fd, kind, 1 if level == 0 else dim, crc_fd, crc_file_name(level))

    @classmethod
    def open(
        cls, path: Path, level: int, block_size: int, dim: int, kind: str, committed: int, tail_crc: int | None
    ) -> tuple[LevelFile, int]:
        """Open and validate a level holding ``committed`` records; truncate any torn tail.

        ``tail_crc`` None: a version 1 tree, whose checksums are computed here (one read of the
        data). Returns the file and the number of torn bytes dropped.
        """
        where, name = path.parent, path.name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise TreeError(f"{where} is corrupted: {name} is missing, manifest commits {committed} records") from None
        crc_fd = -1
        try:
            crc_path = path.with_name(crc_file_name(level))
            flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if tail_crc is None else 0)
            try:
                crc_fd = open_private(crc_path, flags)
            except FileNotFoundError:
                raise TreeError(f"{where} is corrupted: {crc_path.name} (the checksums of {name}) is missing") from None
            level_file = cls(path, fd, kind, 1 if level == 0 else dim, crc_fd, crc_path.name)
            level_file._validate_header(level, block_size, dim, kind)
            size = os.fstat(fd).st_size
            wanted = HEADER_SIZE + committed * level_file.record_bytes
            if size < wanted:
                held = (size - HEADER_SIZE) // level_file.record_bytes
                raise TreeError(f"{where} is corrupted: {name} holds {held} records, manifest commits {committed}")
            if size > wanted:
                os.ftruncate(fd, wanted)
            level_file.committed = committed
            if tail_crc is None:
                level_file._checksum_existing()
            else:
                level_file._load_crcs(tail_crc)
        except BaseException:
            os.close(fd)
            if crc_fd >= 0:
                os.close(crc_fd)
            raise
        return level_file, size - wanted

    def _load_crcs(self, tail_crc: int) -> None:
        full = self.committed // self.chunk_records
        raw = os.pread(self.crc_fd, 4 * full, 0)
        if len(raw) < 4 * full:
            raise TreeError(f"{self.path.parent} is corrupted: {self.crc_name} holds "
                            f"{len(raw) // 4} checksums, {self.path.name} commits {full} complete chunks")
        if os.fstat(self.crc_fd).st_size > 4 * full:  # checksums of an append that was never committed
            os.ftruncate(self.crc_fd, 4 * full)
        self.crcs = np.frombuffer(raw, dtype="<u4").astype(np.int64).tolist()
        self.tail_crc = tail_crc

    def _checksum_existing(self) -> None:
        """Version 1 upgrade: checksum the committed records (one sequential read)."""
        R = self.chunk_records
        crcs = [zlib.crc32(self._read_bytes(c * R, min((c + 1) * R, self.committed)))
                for c in range(self.committed // R)]
        self.crcs = crcs
        self.tail_crc = zlib.crc32(self._read_bytes(len(crcs) * R, self.committed))
        _pwrite_all(self.crc_fd, np.asarray(crcs, dtype="<u4"), 0)

    # ---- checksums -------------------------------------------------------------------------
    def plan_append(self, rows: np.ndarray) -> tuple[list[int], int]:
        """CRCs of the chunks that ``rows`` (appended after the committed records) complete, and the
        new incomplete chunk's CRC. Changes nothing: ``accept`` adopts them once committed."""
        data = memoryview(np.ascontiguousarray(rows)).cast("B")
        R, rb = self.chunk_records, self.record_bytes
        done: list[int] = []
        crc, pos, at = self.tail_crc, self.committed, 0
        while at < len(data):
            take = min(R - pos % R, (len(data) - at) // rb)
            crc = zlib.crc32(data[at:at + take * rb], crc)
            at += take * rb
            pos += take
            if pos % R == 0:
                done.append(crc)
                crc = 0
        return done, crc

    def write_crcs(self, done: list[int]) -> None:
        """Write the checksums of newly completed chunks (before the manifest that commits them)."""
        _pwrite_all(self.crc_fd, np.asarray(done, dtype="<u4"), 4 * len(self.crcs))

    def accept(self, added: int, done: list[int], tail_crc: int) -> None:
        """The append of ``added`` records is committed: adopt its checksums."""
        self._verified.discard(len(self.crcs))  # the chunk that was incomplete has changed
        self.committed += added
        self.crcs.extend(done)
        self.tail_crc = tail_crc

    def verify_chunks(self, chunks: np.ndarray) -> None:
        """Check every chunk in ``chunks`` not checked since open against its CRC (``TreeError`` naming
        the file and the byte range on a mismatch)."""
        R = self.chunk_records
        for c in np.unique(chunks).tolist():
            if c in self._verified:
                continue
            start, end = c * R, min((c + 1) * R, self.committed)
            expected = self.crcs[c] if c < len(self.crcs) else self.tail_crc
            if zlib.crc32(self._read_bytes(start, end)) != expected:
                first, last = HEADER_SIZE + start * self.record_bytes, HEADER_SIZE + end * self.record_bytes
                raise TreeError(f"{self.path.parent} is corrupted: {self.path.name} bytes {first}-{last} (records "
                                f"{start}-{end}) fail their checksum; the tree's data was damaged on disk")
            self._verified.add(c)

    def _read_bytes(self, start: int, end: int) -> bytes:
        rows = np.empty((end - start, self.width), dtype=self.np_dtype)
        self._pread_into(rows, start)
        return rows.tobytes()

    def _validate_header(self, level: int, block_size: int, dim: int, kind: str) -> None:
        where, name = self.path.parent, self.path.name
        raw = os.pread(self.fd, HEADER_SIZE, 0)
        if len(raw) < HEADER_SIZE:
            raise TreeError(f"{where} is corrupted: {name} has a {len(raw)}-byte header, expected {HEADER_SIZE}")
        magic, version, got_level, got_k, got_dim, code = HEADER.unpack_from(raw)
        if magic != LEVEL_MAGIC:
            raise TreeError(
                f"{where} is corrupted: {name} starts with {magic!r}, not {LEVEL_MAGIC!r}; "
                "it is not a MegaContext tree level file"
            )
        expected = (LEVEL_FORMAT_VERSION, level, block_size, dim, RECORD_CODES[kind])
        if (version, got_level, got_k, got_dim, code) != expected:
            raise TreeError(
                f"{where} is corrupted: {name} header says (format_version, level, K, D, dtype code) = "
                f"{(version, got_level, got_k, got_dim, code)}, manifest implies {expected}"
            )

    def write(self, index: int, rows: np.ndarray) -> None:
        """Write ``rows[m, width]`` (or ``[m]`` ids) as records ``index .. index + m``."""
        _pwrite_all(self.fd, rows, HEADER_SIZE + index * self.record_bytes)

    def _pread_into(self, rows: np.ndarray, index: int) -> None:
        """Fill ``rows`` (a C-contiguous block of records) from record ``index`` on."""
        if rows.size == 0:
            return
        view = memoryview(rows).cast("B")
        offset = HEADER_SIZE + index * self.record_bytes
        while view:
            got = os.preadv(self.fd, [view], offset)
            if got == 0:
                raise TreeError(f"{self.path} shrank while open (another writer?)")
            view = view[got:]
            offset += got

    def read(self, start: int, end: int) -> np.ndarray:
        """Records ``[start, end)`` as a new array ``[end - start, width]`` (one syscall), checksums verified."""
        if end > start:
            self.verify_chunks(np.arange(start // self.chunk_records, (end - 1) // self.chunk_records + 1))
        rows = np.empty((end - start, self.width), dtype=self.np_dtype)
        self._pread_into(rows, start)
        return rows

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Records at ``indices[n]`` (checked, int64) as a new array ``[n, width]``.

        One ``preadv`` per run of consecutive distinct indices, so a gather touches only the
        records it returns (a memory map would fault in whole large folios of page cache).
        """
        unique, inverse = np.unique(indices, return_inverse=True)
        self.verify_chunks(unique // self.chunk_records)
        rows = np.empty((unique.shape[0], self.width), dtype=self.np_dtype)
        breaks = (np.flatnonzero(np.diff(unique) != 1) + 1).tolist()
        for run_start, run_end in zip([0, *breaks], [*breaks, unique.shape[0]], strict=True):
            self._pread_into(rows[run_start:run_end], int(unique[run_start]))
        return rows if np.array_equal(unique, indices) else rows[inverse]

    def fsync(self) -> None:
        os.fsync(self.fd)
        os.fsync(self.crc_fd)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.crc_fd)



# ---- the backend -------------------------------------------------------------------------------
class DiskTree(TreeBase):
    """MegaContext tree in a directory (created if missing or empty, else opened and checked).

    ``fsync`` policy: ``"always"`` makes every append durable before it returns (power-loss
    safe); ``"interval"`` does so at most every ``fsync_interval_s`` seconds and on ``flush``;
    ``"never"`` leaves write-back to the OS. A killed process (even SIGKILL) never loses a
    committed append under any policy: the data is in the kernel page cache.

    ``gist_version``: ``None`` takes the stored one (0 for a new tree); an int must match it.
    After ``open``, ``recovered_bytes`` is the size of the torn tails that were dropped.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        block_size: int,
        dim: int,
        embed_fn: EmbedFn,
        gist_fn: GistFn,
        *,
        dtype: torch.dtype = torch.float32,
        gist_version: int | None = None,
        fsync: FsyncPolicy = "always",
        fsync_interval_s: float = 1.0,
    ) -> None:
        super().__init__(
            block_size=block_size,
            dim=dim,
            embed_fn=embed_fn,
            gist_fn=gist_fn,
            dtype=dtype,
            gist_version=0 if gist_version is None else gist_version,
        )
        if fsync not in FSYNC_POLICIES:
            raise TreeError(f"unknown fsync policy {fsync!r}: expected one of {', '.join(FSYNC_POLICIES)}")
        if not fsync_interval_s >= 0:
            raise TreeError(f"fsync_interval_s must be >= 0, got {fsync_interval_s}")
        self.path = Path(path)
        self.fsync_policy: FsyncPolicy = fsync
        self.fsync_interval_s = float(fsync_interval_s)
        self.recovered_bytes = 0
        self._kind = dtype_name(dtype)
        self._files: list[LevelFile] = []
        self._dir_fd = -1
        self._dirty = False  # committed appends not yet made durable (policy "interval")
        self._new_files = False  # level files created since the last directory fsync
        self._last_sync = time.monotonic()
        self._manifest_mode = PRIVATE_FILE
        """Mode of each new manifest: the existing one's (``private_files.replacement_mode``)."""
        try:
            self._lock_dir()
            if (self.path / MANIFEST_NAME).exists():
                self._open_existing(gist_version)
            else:
                self._create()
            self._restore_tails()
        except BaseException:
            self._release()
            raise

    # ---- opening -----------------------------------------------------------------------------
    def _lock_dir(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise TreeError(f"{self.path} is not a directory, so it is not a MegaContext tree")
        make_private_dirs(self.path)
        self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TreeError(f"{self.path} is already open by another DiskTree (one writer at a time)") from None

    def _create(self) -> None:
        (self.path / MANIFEST_TMP_NAME).unlink(missing_ok=True)  # a leftover would lend the manifest its mode
        foreign = sorted(set(os.listdir(self.path)) - {MANIFEST_TMP_NAME})
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise TreeError(f"{self.path} is not a MegaContext tree: no {MANIFEST_NAME}, and it holds {shown}")
        durable = self.fsync_policy != "never"
        self._commit(0, durable=durable)
        if durable:  # the tree directory's own entry (mkdir) in its parent
            parent_fd = os.open(self.path.resolve().parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(parent_fd)
            finally:
                os.close(parent_fd)

    def _open_existing(self, gist_version: int | None) -> None:
        tmp = self.path / MANIFEST_TMP_NAME
        if tmp.exists():  # an interrupted commit: never part of the tree
            tmp.unlink()
        manifest = decode_manifest((self.path / MANIFEST_NAME).read_bytes(), self.path)
        self._manifest_mode = replacement_mode(self.path / MANIFEST_NAME)
        asked = {"block_size": self.block_size, "dim": self.dim, "dtype": self._kind}
        for key, value in asked.items():
            if manifest[key] != value:
                raise TreeError(f"{self.path} holds a tree with {key}={manifest[key]}, asked for {value}")
        if gist_version is not None and manifest["gist_version"] != gist_version:
            raise TreeError(
                f"{self.path} holds gists of GistNet version {manifest['gist_version']}, asked for "
                f"{gist_version}: rebuild the tree, or open it with gist_version=None"
            )
        self.gist_version = manifest["gist_version"]
        self._num_tokens = manifest["num_tokens"]
        upgrade = manifest["format_version"] != FORMAT_VERSION
        tails = manifest.get("tail_crcs", [])
        if not upgrade and len(tails) != self.num_levels:
            raise TreeError(f"{self.path} is corrupted: {MANIFEST_NAME} has {len(tails)} tail checksums "
                            f"for {self.num_levels} levels")
        for level in range(self.num_levels):
            kind = "int32" if level == 0 else self._kind
            level_file, torn = LevelFile.open(
                self.path / level_file_name(level),
                level,
                self.block_size,
                self.dim,
                kind,
                self.level_size(level),
                None if upgrade else tails[level],
            )
            self._files.append(level_file)
            self.recovered_bytes += torn
        if upgrade:  # version 1: the checksums just computed are committed with a version 2 manifest
            self._new_files = True
            self._sync_levels()
            self._commit(self._num_tokens, durable=True)

    # ---- storage hooks -------------------------------------------------------------------------
    def _store(self, ids_N: torch.Tensor, new_gists: list[torch.Tensor], num_tokens: int) -> None:
        blocks = [ids_N.numpy(), *(_gists_to_numpy(g) for g in new_gists)]
        sums: list[tuple[list[int], int]] = []
        for level, rows in enumerate(blocks):
            if level == len(self._files):
                kind = "int32" if level == 0 else self._kind
                path = self.path / level_file_name(level)
                self._files.append(LevelFile.create(path, level, self.block_size, self.dim, kind))
                self._new_files = True
            level_file = self._files[level]
            level_file.write(self.level_size(level), rows)
            sums.append(level_file.plan_append(rows))
            level_file.write_crcs(sums[-1][0])
        tails = [s[1] for s in sums] + [f.tail_crc for f in self._files[len(sums):]]
        durable = self.fsync_policy == "always" or (
            self.fsync_policy == "interval" and time.monotonic() - self._last_sync >= self.fsync_interval_s
        )
        if durable:
            self._sync_levels()
        self._commit(num_tokens, durable=durable, tail_crcs=tails)
        for level_file, rows, (done, tail) in zip(self._files, blocks, sums, strict=False):
            level_file.accept(len(rows), done, tail)
        self._dirty = self.fsync_policy == "interval" and not durable

    def _commit(self, num_tokens: int, *, durable: bool, tail_crcs: list[int] | None = None) -> None:
        """Atomically replace the manifest: temp file, (fsync), ``os.replace``, (fsync dir)."""
        fields = {
            "num_tokens": num_tokens,
            "block_size": self.block_size,
            "dim": self.dim,
            "dtype": self._kind,
            "gist_version": self.gist_version,
            "tail_crcs": [f.tail_crc for f in self._files] if tail_crcs is None else tail_crcs,
        }
        tmp = self.path / MANIFEST_TMP_NAME
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._manifest_mode)
        try:
            _pwrite_all(fd, np.frombuffer(encode_manifest(fields), dtype=np.uint8), 0)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / MANIFEST_NAME)
        if durable:
            os.fsync(self._dir_fd)
            self._last_sync = time.monotonic()

    def _read_ids(self, start: int, end: int) -> torch.Tensor:
        if start == end:
            return torch.empty(0, dtype=torch.int64)
        return torch.from_numpy(self._files[0].read(start, end)[:, 0].astype(np.int64))

    def _gather_ids(self, indices_N: torch.Tensor) -> torch.Tensor:
        if indices_N.numel() == 0:
            return torch.empty(0, dtype=torch.int64)
        return torch.from_numpy(self._files[0].gather(indices_N.numpy())[:, 0].astype(np.int64))

    def _read_gists(self, level: int, start: int, end: int) -> torch.Tensor:
        return _numpy_to_gists(self._files[level].read(start, end), self.dtype)

    def _gather_gists(self, level: int, indices_N: torch.Tensor) -> torch.Tensor:
        return _numpy_to_gists(self._files[level].gather(indices_N.numpy()), self.dtype)

    def _sync_levels(self) -> None:
        """fsync every level file, and the directory if a level file was created since."""
        for level_file in self._files:
            level_file.fsync()
        if self._new_files:  # the new files' entries before the manifest that counts their records
            os.fsync(self._dir_fd)
            self._new_files = False

    def _sync(self) -> None:
        if not self._dirty:
            return
        self._sync_levels()
        fd = os.open(self.path / MANIFEST_NAME, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self._dir_fd)
        self._dirty = False
        self._last_sync = time.monotonic()

    def __del__(self) -> None:
        # A tree dropped without close(): release fds and the lock (no fsync; kill-safe anyway).
        if getattr(self, "_dir_fd", -1) >= 0:
            self._release()

    def _release(self) -> None:
        for level_file in self._files:
            level_file.close()
        self._files = []
        if self._dir_fd >= 0:
            os.close(self._dir_fd)  # releases the flock
            self._dir_fd = -1


def remove_if_closed(path: str | os.PathLike[str]) -> bool:
    """Delete the tree directory ``path`` unless a ``DiskTree`` holds it open (its ``flock``), e.g. a
    temporary tree left behind by a killed process; True if it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _gists_to_numpy(gists_MD: torch.Tensor) -> np.ndarray:
    gists_MD = gists_MD.contiguous()
    if gists_MD.dtype == torch.bfloat16:
        gists_MD = gists_MD.view(torch.int16)
    return gists_MD.numpy()


def _numpy_to_gists(rows_MD: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    gists_MD = torch.from_numpy(rows_MD)
    return gists_MD.view(torch.bfloat16) if dtype == torch.bfloat16 else gists_MD
