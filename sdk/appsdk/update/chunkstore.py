"""The release's chunk store for delta updates: every chunk of every published artifact,
xz-compressed, under its sha256 (`chunks/<aa>/<sha256>.xz`), plus one chunk index per
artifact (`<artifact>.chunks`). A plain static tree: any web server serves it.

A chunk already in the store (the previous release's, hard-linked into the stage) is
checked before it is kept: it must decompress to bytes with its name's sha256. Nothing in
the store is trusted for its name alone. Not yet called by `appsdk release` (issue 16).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import VerifyFailed
from appsdk.update.chunks import (
    BLOCK,
    DEFAULT_PARAMS,
    NAME,
    ChunkIndex,
    ChunkParams,
    index_of,
    iter_chunks,
)

STORE = "chunks"
INDEX_SUFFIX = ".chunks"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class StoreResult:
    index: ChunkIndex
    index_file: Path
    written: int  # distinct chunks compressed and written now
    kept: int  # distinct chunks the store already held (each checked)
    bytes_written: int  # compressed bytes written now


def chunk_path(root: Path, sha256: str) -> Path:
    if len(sha256) != 64 or not set(sha256) <= _HEX:
        raise ValueError(f"not a sha256: {sha256!r}")
    return root / STORE / sha256[:2] / f"{sha256}.xz"


def read_chunk(path: Path, sha256: str, max_size: int) -> bytes:
    """The chunk's bytes, checked against its sha256; VerifyFailed names the file."""
    try:
        with lzma.open(path) as f:
            data = f.read(max_size + 1)
    except (lzma.LZMAError, EOFError) as exc:
        raise VerifyFailed(f"{path}: not a complete xz file ({exc})",
                           hint="the chunk store is damaged; release again") from None
    if len(data) > max_size or hashlib.sha256(data).hexdigest() != sha256:
        raise VerifyFailed(f"{path}: its content does not have the sha256 it is named by",
                           hint="the chunk store is damaged; release again")
    return data


def _write_new(path: Path, data: bytes) -> int:
    """Write `path` whole or not at all (a temporary name, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    packed = lzma.compress(data, preset=6)
    with tmp.open("wb") as f:
        f.write(packed)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    return len(packed)


def add_artifact(root: Path, artifact: Path, name: str,
                 params: ChunkParams = DEFAULT_PARAMS) -> StoreResult:
    """Put every chunk of `artifact` into the store under `root` that is not there yet, and
    write its index as `root/<name>.chunks`. Returns the index and what was written."""
    if not re.fullmatch(NAME, name):
        raise ValueError(f"not an artifact name: {name!r}")
    written = kept = bytes_written = 0
    max_size = params.max_blocks * BLOCK
    chunks = []
    seen: set[str] = set()  # a chunk repeated in the file is checked or written once
    whole = hashlib.sha256()
    for chunk, data in iter_chunks(artifact, params):
        whole.update(data)
        chunks.append(chunk)
        if chunk.sha256 in seen:
            continue
        seen.add(chunk.sha256)
        path = chunk_path(root, chunk.sha256)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise VerifyFailed(f"{path}: not a regular file",
                               hint="the chunk store holds only files; remove it")
        if path.exists():
            read_chunk(path, chunk.sha256, max_size)
            kept += 1
            continue
        bytes_written += _write_new(path, data)
        written += 1
    index = index_of(name, params, chunks, whole.hexdigest())
    index_file = root / f"{name}{INDEX_SUFFIX}"
    index_file.write_text(index.to_text())
    return StoreResult(index, index_file, written, kept, bytes_written)
