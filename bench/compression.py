#!/usr/bin/env python3
"""update.compression: each codec appsdk offers on a finished build's UKI, /usr and verity
tree, side by side: download bytes, time to compress (with the exact argv the build uses),
time to unpack, and the ratio of each to xz's (the default). Prints figures; asserts nothing.

    python3 bench/compression.py BUILD_DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import report

from appsdk import load_record
from appsdk.spec.appliance import COMPRESSIONS, DEFAULT_COMPRESSION


def timed(argv: list[str], source: Path, target: Path) -> float:
    started = time.monotonic()
    with target.open("wb") as out:
        subprocess.run([*argv, str(source)], stdout=out, check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path)
    args = parser.parse_args()
    record = load_record(args.build)
    sources = [args.build / record.artifacts[kind].file for kind in ("uki", "usr", "verity")]
    raw = sum(p.stat().st_size for p in sources)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec in COMPRESSIONS.items():
            size = pack = unpack = 0.0
            for source in sources:
                packed = Path(tmp) / (source.name + codec.suffix)
                pack += timed(list(codec.argv), source, packed)
                unpack += timed(list(codec.unpack), packed, Path(tmp) / "out")
                size += packed.stat().st_size
            figures[name] = {"mb": round(size / 1e6, 1), "compress_s": round(pack, 1),
                             "unpack_s": round(unpack, 2)}
    base = figures[DEFAULT_COMPRESSION]
    print(f"{record.id} {record.version} for {record.board.name}: {raw / 1e6:.1f} MB raw")
    for name, f in figures.items():
        print(f"  {name:<5} {f['mb']:7.1f} MB ({f['mb'] / base['mb']:.2f}x {DEFAULT_COMPRESSION}) "
              f" compress {f['compress_s']:5.1f} s ({f['compress_s'] / base['compress_s']:.2f}x)"
              f"  unpack {f['unpack_s']:5.2f} s ({f['unpack_s'] / base['unpack_s']:.2f}x)")
    report("compression", {"build": str(args.build), "raw_mb": round(raw / 1e6, 1), **figures})


if __name__ == "__main__":
    main()
