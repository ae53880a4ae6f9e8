"""Chunking of update artifacts for delta downloads: the cut points and each chunk's sha256,
written as a chunk index that a device compares with what it already holds.

Cut points are content-defined, at block granularity: a file is read in 4 KiB blocks, and a
chunk ends after a block whose own sha256 says so (its first four bytes, modulo the average
chunk length in blocks, are zero), within a minimum and a maximum length. Why blocks and not
a rolling hash over bytes (casync's buzhash): erofs, the verity tree and the UKI's sections
place data on 4 KiB boundaries, so what a new version moves, it moves by whole blocks, and a
cut that depends on one block's content finds the same cuts again after the move. The
device then needs one sha256 per block of what it already has (hashlib, in C) and no rolling
hash in Python. docs/updates.md has the measurements behind the parameters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appsdk.core.errors import ConfigError

BLOCK = 4096
INDEX_FORMAT = "appsdk-chunk-index 1"
MAX_INDEX_CHUNKS = 1 << 20  # 1 Mi chunks of at least 4 KiB: 4 GiB and more per artifact
NAME = r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,254}"  # an artifact's name: a plain file name


@dataclass(frozen=True)
class ChunkParams:
    """Chunk lengths in blocks: never fewer than `min_blocks` (but the file's last chunk),
    `avg_blocks` on average, never more than `max_blocks`."""

    min_blocks: int = 4
    avg_blocks: int = 16
    max_blocks: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.min_blocks <= self.avg_blocks <= self.max_blocks <= 4096:
            raise ValueError(f"chunk parameters out of order: {self}")


DEFAULT_PARAMS = ChunkParams()


@dataclass(frozen=True)
class Chunk:
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class ChunkIndex:
    """One artifact (the uncompressed file a slot or the ESP receives), cut into chunks."""

    name: str
    size: int
    sha256: str
    params: ChunkParams
    chunks: tuple[Chunk, ...]

    def to_text(self) -> str:
        p = self.params
        head = (f"{INDEX_FORMAT}\nname {self.name}\nsize {self.size}\nsha256 {self.sha256}\n"
                f"block {BLOCK} min {p.min_blocks} avg {p.avg_blocks} max {p.max_blocks}\n"
                f"chunks {len(self.chunks)}\n")
        return head + "".join(f"{c.sha256} {c.size}\n" for c in self.chunks)


def _is_cut(block_digest: bytes, avg_blocks: int) -> bool:
    return int.from_bytes(block_digest[:4], "big") % avg_blocks == 0


def cut_points(blocks: Iterator[bytes], params: ChunkParams = DEFAULT_PARAMS
               ) -> Iterator[bytes]:
    """The chunks (their bytes) of a stream of blocks, in order."""
    pending: list[bytes] = []
    for block in blocks:
        pending.append(block)
        n = len(pending)
        if n >= params.max_blocks or (
                n >= params.min_blocks
                and _is_cut(hashlib.sha256(block).digest(), params.avg_blocks)):
            yield b"".join(pending)
            pending = []
    if pending:
        yield b"".join(pending)


def _blocks(f: BinaryIO) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        yield block


def iter_chunks(path: Path, params: ChunkParams = DEFAULT_PARAMS
                ) -> Iterator[tuple[Chunk, bytes]]:
    """Each chunk of `path` with its bytes, in file order."""
    offset = 0
    with path.open("rb") as f:
        for data in cut_points(_blocks(f), params):
            yield Chunk(offset, len(data), hashlib.sha256(data).hexdigest()), data
            offset += len(data)


def chunk_file(path: Path, name: str | None = None,
               params: ChunkParams = DEFAULT_PARAMS) -> ChunkIndex:
    whole = hashlib.sha256()
    chunks = []
    for chunk, data in iter_chunks(path, params):
        whole.update(data)
        chunks.append(chunk)
    return index_of(name or path.name, params, chunks, whole.hexdigest())


def index_of(name: str, params: ChunkParams, chunks: list[Chunk], sha256: str) -> ChunkIndex:
    """The index of a file's chunks, in order (its size is where the last one ends)."""
    size = chunks[-1].offset + chunks[-1].size if chunks else 0
    return ChunkIndex(name, size, sha256, params, tuple(chunks))


_HEAD = re.compile(
    rf"{re.escape(INDEX_FORMAT)}\n"
    rf"name (?P<name>{NAME})\n"
    r"size (?P<size>0|[1-9][0-9]{0,15})\n"
    r"sha256 (?P<sha256>[0-9a-f]{64})\n"
    rf"block {BLOCK} min (?P<min>[1-9][0-9]{{0,3}}) avg (?P<avg>[1-9][0-9]{{0,3}}) "
    r"max (?P<max>[1-9][0-9]{0,3})\n"
    r"chunks (?P<count>0|[1-9][0-9]{0,7})\n")
_LINE = re.compile(r"([0-9a-f]{64}) ([1-9][0-9]{0,9})")


def parse_index(data: bytes, where: str) -> ChunkIndex:
    """A chunk index as to_text wrote it, every field checked: the chunks tile the file
    exactly, each within the parameters. `where` names the file in errors."""
    def bad(why: str, line: int | None = None) -> ConfigError:
        return ConfigError(f"not a chunk index: {why}", file=where, line=line,
                           hint="chunk indexes are written by `appsdk release`")

    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise bad("not ASCII") from None
    head = _HEAD.match(text)
    if head is None:
        raise bad("its header is missing or malformed", 1)
    try:
        params = ChunkParams(int(head["min"]), int(head["avg"]), int(head["max"]))
    except ValueError as e:
        raise bad(str(e), 5) from None
    count, size = int(head["count"]), int(head["size"])
    if count > MAX_INDEX_CHUNKS:
        raise bad(f"{count} chunks (at most {MAX_INDEX_CHUNKS})", 6)
    lines = text[head.end():].split("\n")
    if lines[-1] != "":
        raise bad("it does not end with a newline")
    lines.pop()
    if len(lines) != count:
        raise bad(f"it says {count} chunks and lists {len(lines)}")
    chunks, offset = [], 0
    for number, line in enumerate(lines, 7):
        match = _LINE.fullmatch(line)
        if match is None:
            raise bad("not a `<sha256> <size>` line", number)
        length = int(match[2])
        last = number == count + 6
        if length > params.max_blocks * BLOCK or (
                not last and (length % BLOCK or length < params.min_blocks * BLOCK)):
            raise bad(f"a chunk of {length} bytes does not fit its parameters", number)
        chunks.append(Chunk(offset, length, match[1]))
        offset += length
    if offset != size:
        raise bad(f"its chunks add up to {offset} bytes, not the {size} it says")
    return ChunkIndex(head["name"], size, head["sha256"], params, tuple(chunks))
