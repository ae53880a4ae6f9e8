#!/usr/bin/env python3
"""Flash figures on one direct-I/O loop device, in one run: `appsdk flash` (bmap writes and
read-back verification) vs `dd bs=4M oflag=direct` of the whole image vs `bmaptool copy`
(bmap writes, checksums while reading the image, no read-back); `appsdk flash --no-verify`
is timed too, for the cost of the read-back. Prints times and ratios; asserts nothing.
Needs root.

Two profiles of the same loop device, each tool run in turn:
  loop  as it is: backed by a file on the host disk (GB/s; CPU-bound for every tool)
  card  the same device throttled by the block-I/O cgroup to a card's speeds (default
        25 MB/s write, 90 MB/s read, an A1 microSD card in a USB 3 reader). The cgroup
        limits each direction on its own, so appsdk's read-back overlaps its writes, which
        a card serializes: `appsdk_over_dd_serialized` adds the whole read time back.

    python3 bench/flash_speed.py BUILD_DIR|IMAGE [--profiles loop,card] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CGROUP_NAME = "appsdk-flash-bench"


@contextmanager
def throttled(dev: str, write_bps: int, read_bps: int) -> Iterator[Callable[[], None]]:
    """A block-I/O cgroup limiting `dev`; yields a preexec function that joins it."""
    st = os.stat(dev)
    majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "io" in v2.read_text().split():
        root = Path("/sys/fs/cgroup")
        (root / "cgroup.subtree_control").write_text("+io")
        group = root / CGROUP_NAME
        group.mkdir(exist_ok=True)
        (group / "io.max").write_text(f"{majmin} rbps={read_bps} wbps={write_bps}")
    else:
        group = Path("/sys/fs/cgroup/blkio") / CGROUP_NAME
        group.mkdir(exist_ok=True)
        (group / "blkio.throttle.write_bps_device").write_text(f"{majmin} {write_bps}")
        (group / "blkio.throttle.read_bps_device").write_text(f"{majmin} {read_bps}")
    procs = group / "cgroup.procs"
    try:
        yield lambda: procs.write_text(str(os.getpid()))
    finally:
        group.rmdir()


def timed(argv: list[str], preexec: Callable[[], None] | None) -> float:
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   preexec_fn=preexec)
    return time.monotonic() - start


def run_profile(source_image: Path, bmap_path: Path, dev: str, rounds: int,
                preexec: Callable[[], None] | None) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"appsdk": [], "dd": [], "bmaptool": [],
                                     "appsdk_no_verify": []}
    for _ in range(rounds):
        times["dd"].append(timed(["dd", f"if={source_image}", f"of={dev}", "bs=4M",
                                  "oflag=direct", "status=none"], preexec))
        times["bmaptool"].append(timed(["bmaptool", "copy", "--bmap", str(bmap_path),
                                        str(source_image), dev], preexec))
        flash = [sys.executable, "-m", "appsdk.cli", "flash", str(source_image), dev, "--yes",
                 "--allow-fixed"]
        times["appsdk"].append(timed(flash, preexec))
        times["appsdk_no_verify"].append(timed([*flash, "--no-verify"], preexec))
    return times


def figures(times: dict[str, list[float]]) -> dict[str, Any]:
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "dd_s": round(best["dd"], 2),
        "bmaptool_copy_s": round(best["bmaptool"], 2),
        "appsdk_flash_with_verify_s": round(best["appsdk"], 2),
        "appsdk_flash_no_verify_s": round(best["appsdk_no_verify"], 2),
        "appsdk_over_dd": round(best["appsdk"] / best["dd"], 3),
        "appsdk_over_bmaptool": round(best["appsdk"] / best["bmaptool"], 3),
        "median_appsdk_over_dd": round(median["appsdk"] / median["dd"], 3),
        "median_appsdk_over_bmaptool": round(median["appsdk"] / median["bmaptool"], 3),
        "all_runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="build directory or image with .bmap")
    parser.add_argument("--device-size", default="8G")
    parser.add_argument("--profiles", default="loop,card", help="loop, card or both")
    parser.add_argument("--rounds", type=int, default=5, help="runs per tool on `loop`")
    parser.add_argument("--card-rounds", type=int, default=2, help="runs per tool on `card`")
    parser.add_argument("--card-write-mbps", type=float, default=25.0)
    parser.add_argument("--card-read-mbps", type=float, default=90.0)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "sdk"))
    from appsdk.deliver.flash import open_source
    from appsdk.image import bmap

    source = open_source(args.source)
    work = Path(tempfile.mkdtemp(prefix="appsdk-flash-bench-"))
    bmap_path = bmap.write(source.bmap, work / "image.bmap")
    backing = work / "device"
    subprocess.run(["truncate", "-s", args.device_size, str(backing)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(backing)],
                         check=True, capture_output=True, text=True).stdout.strip()
    # The image is read from the page cache by all three: warm it once.
    subprocess.run(["cat", str(source.image)], stdout=subprocess.DEVNULL, check=True)
    results: dict[str, object] = {
        "image_mb": round(source.bmap.image_size / 1e6, 1),
        "mapped_mb": round(source.bmap.mapped_bytes / 1e6, 1),
        "goal": "appsdk <= 0.35x dd and <= 1.1x bmaptool",
    }
    try:
        profiles = args.profiles.split(",")
        if "loop" in profiles:
            results["loop"] = figures(run_profile(source.image, bmap_path, dev, args.rounds,
                                                  None))
        if "card" in profiles:
            write_bps, read_bps = (int(args.card_write_mbps * 1e6),
                                   int(args.card_read_mbps * 1e6))
            with throttled(dev, write_bps, read_bps) as join:
                card = figures(run_profile(source.image, bmap_path, dev, args.card_rounds,
                                           join))
            serialized = card["appsdk_flash_with_verify_s"] + source.bmap.mapped_bytes / read_bps
            card.update(write_mb_per_s=args.card_write_mbps, read_mb_per_s=args.card_read_mbps,
                        appsdk_over_dd_serialized=round(serialized / card["dd_s"], 3))
            results["card"] = card
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        backing.unlink()
        work.joinpath("image.bmap").unlink()
        work.rmdir()
    from results_file import report

    report("flash_speed", results)


if __name__ == "__main__":
    main()
