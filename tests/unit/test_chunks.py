"""Chunking for delta updates (appsdk.update.chunks): the cuts, and the index's strict
parser."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.core.errors import ConfigError
from appsdk.update import chunks
from appsdk.update.chunks import BLOCK, ChunkParams, chunk_file, parse_index

SMALL = ChunkParams(2, 4, 16)


def blocks_of(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(BLOCK) for _ in range(count)]


def write(path: Path, blocks: list[bytes], tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(blocks) + tail)
    return path


def test_chunks_tile_the_file_within_their_parameters(tmp_path: Path) -> None:
    data = blocks_of(1, 500)
    index = chunk_file(write(tmp_path / "f", data, b"tail"), params=SMALL)
    assert index.size == 500 * BLOCK + 4
    assert index.sha256 == hashlib.sha256((tmp_path / "f").read_bytes()).hexdigest()
    offset = 0
    for chunk in index.chunks:
        assert chunk.offset == offset
        offset += chunk.size
    assert offset == index.size
    sizes = [c.size for c in index.chunks]
    assert all(2 * BLOCK <= s <= 16 * BLOCK for s in sizes[:-1])
    # Content-defined: lengths vary, and the average is near the parameter's.
    assert len(set(sizes)) > 3
    assert 2.5 <= 500 / len(sizes) <= 7


def test_blocks_moved_as_a_whole_keep_their_chunks(tmp_path: Path) -> None:
    """What erofs does when a file grows: everything after it moves by whole blocks. Cuts
    depend on block contents only, so they are found again after the insertion."""
    data = blocks_of(2, 800)
    old = chunk_file(write(tmp_path / "old", data), params=SMALL)
    moved = data[:300] + blocks_of(3, 5) + data[300:]
    new = chunk_file(write(tmp_path / "new", moved), params=SMALL)
    have = {c.sha256 for c in old.chunks}
    fetched = sum(c.size for c in new.chunks if c.sha256 not in have)
    assert fetched <= 5 * BLOCK + 3 * 16 * BLOCK  # the new blocks and the chunks around them
    # Fixed-size chunks would lose everything after the insertion point.
    fixed_old = {hashlib.sha256(b"".join(data[i:i + 4])).digest() for i in range(0, 800, 4)}
    fixed_lost = sum(1 for i in range(0, len(moved), 4)
                     if hashlib.sha256(b"".join(moved[i:i + 4])).digest() not in fixed_old)
    assert fixed_lost > 100


def test_same_bytes_same_index(tmp_path: Path) -> None:
    data = blocks_of(4, 100)
    a = chunk_file(write(tmp_path / "a", data), "x.usr", SMALL)
    b = chunk_file(write(tmp_path / "b", data), "x.usr", SMALL)
    assert a.to_text() == b.to_text()


def test_empty_file(tmp_path: Path) -> None:
    index = chunk_file(write(tmp_path / "e", []), params=SMALL)
    assert index.chunks == () and index.size == 0
    assert parse_index(index.to_text().encode(), "e.idx") == index


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        ChunkParams(8, 4, 16)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=0, max_size=60), st.binary(max_size=BLOCK - 1))
def test_index_text_round_trips(tmp_path_factory: pytest.TempPathFactory, picks: list[int],
                                tail: bytes) -> None:
    pool = blocks_of(5, 8)  # repeated blocks: repeated chunks are listed each time
    path = write(tmp_path_factory.mktemp("rt") / "f", [pool[i] for i in picks], tail)
    index = chunk_file(path, "hello_2.0.usr", SMALL)
    assert parse_index(index.to_text().encode(), "f.idx") == index


def sample_index(tmp_path: Path) -> bytes:
    path = write(tmp_path / "s", blocks_of(6, 40), b"end")
    return chunk_file(path, "hello_2.0.usr", SMALL).to_text().encode()


@pytest.mark.parametrize("change, why", [
    (lambda t: t.replace(b"appsdk-chunk-index 1", b"appsdk-chunk-index 2"), "header"),
    (lambda t: t.replace(b"name hello_2.0.usr", b"name ../etc/passwd"), "header"),
    (lambda t: t.replace(b"name hello_2.0.usr", b"name h\xc3\xa9llo"), "ASCII"),
    (lambda t: t[:-1], "newline"),
    (lambda t: t + b"0" * 64 + b" 4096\n", "lists"),
    (lambda t: t.replace(b"min 2 avg 4", b"min 5 avg 4"), "out of order"),
    (lambda t: t.replace(b"size ", b"size 1", 1), "add up"),
    (lambda t: t.replace(b" 8192\n", b" 8193\n", 1), "fit"),
    (lambda t: t.replace(b" 8192\n", b" 08192\n", 1), "line"),
    (lambda t: t.replace(b"chunks ", b"chunks 99999999", 1), "header"),
    (lambda t: b"\x00" + t, "header"),
])
def test_a_bad_index_is_refused_naming_the_file(
        tmp_path: Path, change: Callable[[bytes], bytes], why: str) -> None:
    text = sample_index(tmp_path)
    assert b" 8192\n" in text
    with pytest.raises(ConfigError, match=why) as caught:
        parse_index(change(text), "hello_2.0.usr.idx")
    assert "hello_2.0.usr.idx" in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_is_refused_or_parsed_never_a_crash(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_index(data, "g.idx")


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_indexes_are_refused_or_consistent(tmp_path_factory: pytest.TempPathFactory,
                                                  data: st.DataObject) -> None:
    text = bytearray(sample_index(tmp_path_factory.mktemp("m")))
    pos = data.draw(st.integers(0, len(text) - 1))
    text[pos] = data.draw(st.integers(0, 255))
    try:
        index = parse_index(bytes(text), "m.idx")
    except ConfigError:
        return
    assert sum(c.size for c in index.chunks) == index.size  # whatever parses is consistent


def test_max_chunks_guard() -> None:
    head = (f"{chunks.INDEX_FORMAT}\nname x\nsize 0\nsha256 {'0' * 64}\n"
            f"block {BLOCK} min 1 avg 1 max 1\nchunks {chunks.MAX_INDEX_CHUNKS + 1}\n")
    with pytest.raises(ConfigError, match="at most"):
        parse_index(head.encode(), "big.idx")
