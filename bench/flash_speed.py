#!/usr/bin/env python3
"""Flash figures on one direct-I/O loop device, in one run: `appsdk flash` (bmap writes and
read-back verification) vs `dd bs=4M oflag=direct` of the whole image vs `bmaptool copy`
(bmap writes, checksums while reading the image, no read-back). Prints times and ratios;
asserts nothing. Needs root.

    python3 bench/flash_speed.py BUILD_DIR|IMAGE [--device-size 8G] [--rounds 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str]) -> float:
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="build directory or image with .bmap")
    parser.add_argument("--device-size", default="8G")
    parser.add_argument("--rounds", type=int, default=5, help="runs per tool (best and median)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "sdk"))
    from appsdk.flash import open_source

    source = open_source(args.source)
    from appsdk import bmap

    work = Path(tempfile.mkdtemp(prefix="appsdk-flash-bench-"))
    bmap_path = bmap.write(source.bmap, work / "image.bmap")
    backing = work / "device"
    subprocess.run(["truncate", "-s", args.device_size, str(backing)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(backing)],
                         check=True, capture_output=True, text=True).stdout.strip()
    # The image is read from the page cache by all three: warm it once.
    subprocess.run(["cat", str(source.image)], stdout=subprocess.DEVNULL, check=True)
    times: dict[str, list[float]] = {"appsdk": [], "dd": [], "bmaptool": []}
    try:
        for _ in range(args.rounds):
            times["dd"].append(timed(["dd", f"if={source.image}", f"of={dev}", "bs=4M",
                                      "oflag=direct", "status=none"]))
            times["bmaptool"].append(timed(["bmaptool", "copy", "--bmap", str(bmap_path),
                                            str(source.image), dev]))
            times["appsdk"].append(timed([sys.executable, "-m", "appsdk.cli", "flash",
                                          str(source.image), dev, "--yes", "--allow-fixed"]))
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        backing.unlink()
    import statistics

    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    figures = {
        "image_mb": round(source.bmap.image_size / 1e6, 1),
        "mapped_mb": round(source.bmap.mapped_bytes / 1e6, 1),
        "dd_s": round(best["dd"], 2),
        "bmaptool_copy_s": round(best["bmaptool"], 2),
        "appsdk_flash_with_verify_s": round(best["appsdk"], 2),
        "appsdk_over_dd": round(best["appsdk"] / best["dd"], 3),
        "appsdk_over_bmaptool": round(best["appsdk"] / best["bmaptool"], 3),
        "median_appsdk_over_dd": round(median["appsdk"] / median["dd"], 3),
        "median_appsdk_over_bmaptool": round(median["appsdk"] / median["bmaptool"], 3),
        "goal": "appsdk <= 0.35x dd and <= 1.1x bmaptool",
        "all_runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
    }
    from results_file import report

    report("flash_speed", figures)


if __name__ == "__main__":
    main()
