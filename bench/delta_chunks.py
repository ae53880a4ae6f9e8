#!/usr/bin/env python3
"""What a delta update would download between two builds of one appliance, per chunker,
against the full (compressed) download of the new build.

    python3 bench/delta_chunks.py OLD_BUILD_DIR NEW_BUILD_DIR [--params MIN,AVG,MAX ...]

For each artifact (UKI, /usr, verity tree, uncompressed as the slots hold them) and each
chunker: the new build's chunks that the old build's artifacts of any kind do not hold
(what the device must fetch), their size compressed one by one with xz (as a chunk store
holds them), and the chunk index (text, as published). Chunkers: appsdk's block-aligned
content-defined cuts (appsdk.update.chunks) with the given parameters, and fixed-size
chunks of the same average length for comparison. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
from collections.abc import Callable, Iterator
from pathlib import Path

from appsdk import load_record
from appsdk.update import chunks

KINDS = ("uki", "usr", "verity")


def fixed(path: Path, blocks: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(blocks * chunks.BLOCK):
            yield data


def cdc(path: Path, params: chunks.ChunkParams) -> Iterator[bytes]:
    for _, data in chunks.iter_chunks(path, params):
        yield data


def artifacts(build: Path) -> dict[str, Path]:
    record = load_record(build)
    return {kind: build / record.artifacts[kind].file for kind in KINDS}


Cut = Callable[[Path], Iterator[bytes]]


def measure(old: dict[str, Path], new: dict[str, Path], cut: Cut) -> dict[str, tuple[int, ...]]:
    have = {hashlib.sha256(d).digest() for kind in KINDS for d in cut(old[kind])}
    out = {}
    for kind in KINDS:
        count = fetch = fetch_xz = 0
        seen = set()
        for data in cut(new[kind]):
            count += 1
            digest = hashlib.sha256(data).digest()
            if digest in have or digest in seen:
                continue
            seen.add(digest)
            fetch += len(data)
            fetch_xz += len(lzma.compress(data, preset=6))
        index = len(chunks.INDEX_FORMAT) + 200 + count * 72  # header + "<sha256> <size>\n"
        out[kind] = (count, fetch, fetch_xz, index)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--params", nargs="*", default=["4,16,128", "2,8,64", "1,4,32"])
    args = parser.parse_args()
    old, new = artifacts(args.old), artifacts(args.new)
    record = load_record(args.new)
    full = sum(record.artifacts[f"update-{k}"].size for k in KINDS)
    print(f"full download of the new build: {full / 1e6:.1f} MB")
    print(f"{'chunker':<26}{'kind':<8}{'chunks':>8}{'fetch MB':>10}{'xz MB':>9}"
          f"{'index KB':>10}")
    for spec in args.params:
        lo, avg, hi = (int(x) for x in spec.split(","))
        params = chunks.ChunkParams(lo, avg, hi)
        for label, cut in ((f"block-CDC {spec}", lambda p, q=params: cdc(p, q)),
                           (f"fixed {avg * 4} KiB", lambda p, n=avg: fixed(p, n))):
            total = 0
            for kind, (count, fetch, fetch_xz, index) in measure(old, new, cut).items():
                total += fetch_xz + index
                print(f"{label:<26}{kind:<8}{count:>8}{fetch / 1e6:>10.3f}"
                      f"{fetch_xz / 1e6:>9.3f}{index / 1e3:>10.1f}")
            print(f"{label:<26}{'total':<8}{'':>8}{'':>10}{total / 1e6:>9.3f} MB = "
                  f"{total / full:.4f}x the full download")


if __name__ == "__main__":
    main()
