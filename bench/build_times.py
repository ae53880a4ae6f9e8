#!/usr/bin/env python3
"""Build figures for examples/hello: cold build (empty cache: tools tree, rootfs, initrd all
made) vs warm rebuild after an overlay change, image size vs bytes mapped in the bmap, and
the /usr image and UKI sizes. Prints ratios; asserts nothing. Needs root and a mirror.

    python3 bench/build_times.py [--keep-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_build(app: Path, out: Path, keys: Path) -> tuple[float, object]:
    import appsdk

    start = time.monotonic()
    result = appsdk.build(app, board="x86-uefi", output=out, key_dir=keys)
    return time.monotonic() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-cache", action="store_true", help="keep the cold cache dir")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="appsdk-bench-"))
    os.environ["APPSDK_CACHE_DIR"] = str(work / "cache")  # cold: nothing cached
    app = work / "hello"
    shutil.copytree(REPO / "examples/hello", app, ignore=shutil.ignore_patterns("build"))

    from appsdk.core.runner import Runner
    from appsdk.trust import keys

    key = keys.generate(work / "keys", "bench key", Runner())  # throw-away signing key
    cold, result = timed_build(app, work / "out-cold", key.home)
    (app / "overlay/usr/lib/hello/motd.txt").write_text(f"changed {time.time()}\n")
    warm, result = timed_build(app, work / "out-warm", key.home)

    import appsdk

    record = appsdk.load_record(result.output)
    figures = {
        "cold_build_s": round(cold, 1),
        "warm_rebuild_after_overlay_change_s": round(warm, 1),
        "warm_over_cold": round(warm / cold, 3),
        "image_size_mb": round(record.artifacts["image"].size / 1e6, 1),
        "bmap_mapped_mb": round((record.mapped_bytes or 0) / 1e6, 1),
        "usr_image_mb": round(record.artifacts["usr"].size / 1e6, 1),
        "uki_mb": round(record.artifacts["uki"].size / 1e6, 1),
        "reference_nixos_image_mb": 1100,
    }
    print(f"cold build                  {cold:7.1f} s")
    print(f"warm rebuild (overlay edit) {warm:7.1f} s   = {warm / cold:.2f}x cold (goal <= 0.20)")
    print(f"image                       {figures['image_size_mb']:7.1f} MB (sparse)")
    print(f"mapped in bmap              {figures['bmap_mapped_mb']:7.1f} MB   = "
          f"{figures['bmap_mapped_mb'] / 1100:.2f}x the 1.1 GB NixOS reference (goal <= 600 MB)")
    print(f"/usr image (erofs)          {figures['usr_image_mb']:7.1f} MB")
    print(f"UKI                         {figures['uki_mb']:7.1f} MB")
    results = REPO / "bench/results"
    results.mkdir(exist_ok=True)
    (results / "build_times.json").write_text(json.dumps(figures, indent=2) + "\n")
    if not args.keep_cache:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
