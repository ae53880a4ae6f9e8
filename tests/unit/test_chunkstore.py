"""The release's chunk store (appsdk.update.chunkstore): chunks written once, checked when
reused, and the artifacts rebuilt from it byte for byte."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from appsdk.core.errors import VerifyFailed
from appsdk.update.chunks import BLOCK, ChunkParams, parse_index
from appsdk.update.chunkstore import add_artifact, chunk_path, read_chunk

SMALL = ChunkParams(2, 4, 16)


def artifact(path: Path, seed: int, count: int, changed: tuple[int, ...] = ()) -> Path:
    rng = random.Random(seed)
    blocks = [rng.randbytes(BLOCK) for _ in range(count)]
    for i in changed:
        blocks[i] = bytes(BLOCK - 1) + b"\x01"
    path.write_bytes(b"".join(blocks) + bytes(BLOCK * 64))  # a run of zero blocks at the end
    return path


def rebuild(root: Path, index_file: Path) -> bytes:
    index = parse_index(index_file.read_bytes(), str(index_file))
    return b"".join(read_chunk(chunk_path(root, c.sha256), c.sha256, 16 * BLOCK)
                    for c in index.chunks)


def test_a_second_version_writes_only_its_changed_chunks(tmp_path: Path) -> None:
    root = tmp_path / "www"
    v1 = add_artifact(root, artifact(tmp_path / "v1", 1, 300), "hello_1.0.usr", SMALL)
    v2 = add_artifact(root, artifact(tmp_path / "v2", 1, 300, (150,)), "hello_2.0.usr", SMALL)
    assert v1.kept == 0 and v1.written > 50
    # One changed block: its chunk (or two, when the change moved a cut) is new, the rest kept.
    assert 1 <= v2.written <= 2 and v2.kept >= v1.written - 2
    assert rebuild(root, v1.index_file) == (tmp_path / "v1").read_bytes()
    assert rebuild(root, v2.index_file) == (tmp_path / "v2").read_bytes()
    # The run of zero blocks repeats one chunk, stored once.
    digests = [c.sha256 for c in v1.index.chunks]
    assert v1.written == len(set(digests)) < len(digests)


def test_a_damaged_chunk_in_the_store_is_found(tmp_path: Path) -> None:
    root = tmp_path / "www"
    first = add_artifact(root, artifact(tmp_path / "a", 2, 40), "a.usr", SMALL)
    victim = chunk_path(root, first.index.chunks[3].sha256)
    other = chunk_path(root, first.index.chunks[4].sha256)
    victim.write_bytes(other.read_bytes())  # valid xz, wrong content
    with pytest.raises(VerifyFailed, match=victim.name):
        add_artifact(root, tmp_path / "a", "a.usr", SMALL)
    victim.write_bytes(other.read_bytes()[:-10])  # cut short
    with pytest.raises(VerifyFailed, match="not a complete xz file"):
        add_artifact(root, tmp_path / "a", "a.usr", SMALL)


def test_a_symlink_in_the_store_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "www"
    first = add_artifact(root, artifact(tmp_path / "a", 3, 40), "a.usr", SMALL)
    victim = chunk_path(root, first.index.chunks[0].sha256)
    victim.unlink()
    victim.symlink_to("/etc/passwd")
    with pytest.raises(VerifyFailed, match="not a regular file"):
        add_artifact(root, tmp_path / "a", "a.usr", SMALL)


def test_artifact_names_are_plain_file_names(tmp_path: Path) -> None:
    for bad in ("../x", "a/b", "", ".hidden", "x\ny"):
        with pytest.raises(ValueError):
            add_artifact(tmp_path, artifact(tmp_path / "a", 4, 4), bad, SMALL)


def test_chunk_names_are_sha256_only(tmp_path: Path) -> None:
    for bad in ("../" + "0" * 61, "A" * 64, "0" * 63):
        with pytest.raises(ValueError):
            chunk_path(tmp_path, bad)
