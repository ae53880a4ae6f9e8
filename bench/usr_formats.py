#!/usr/bin/env python3
"""Which /usr image format to ship: on-disk slot usage vs download size vs build time.

Builds examples/hello's customized tree once, then makes the /usr image in each candidate
format side by side, with the transport compression sysupdate can decode (xz; systemd-pull
257 has no zstd). Prints a table; asserts nothing. Needs root and a Debian mirror.

    python3 bench/usr_formats.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (mkfs argv builder, transport: xz preset or None = shipped as it is)
CANDIDATES = {
    "erofs-lz4hc + xz-6": (["mkfs.erofs", "-zlz4hc", "-T0"], "-6"),
    "erofs-lz4hc + xz-3": (["mkfs.erofs", "-zlz4hc", "-T0"], "-3"),
    "erofs-plain + xz-6": (["mkfs.erofs", "-T0"], "-6"),
    "erofs-lzma (128K) raw": (["mkfs.erofs", "-zlzma", "-C131072", "-T0"], None),
    "squashfs-zstd raw": (["mksquashfs-zstd"], None),
}


def main() -> None:
    from appsdk.contract.layout import layout_for
    from appsdk.core.progress import NullReporter
    from appsdk.core.runner import Runner
    from appsdk.pipeline.stages.customize import customize
    from appsdk.pipeline.stages.rootfs import build_rootfs, recipe_for
    from appsdk.pipeline.tools import ensure_tools
    from appsdk.spec.appliance import load_appliance
    from appsdk.spec.boards import load_board

    runner, reporter = Runner(), NullReporter()
    app = load_appliance(REPO / "examples/hello")
    board = load_board("x86-uefi")
    tools = ensure_tools(runner, reporter)
    rootfs = build_rootfs(recipe_for(app, board), runner, reporter)
    work = Path(tempfile.mkdtemp(prefix="appsdk-usrfmt-"))
    tree = customize(app, layout_for(app, board), rootfs, work, runner).tree
    usr_bytes = sum(p.lstat().st_size for p in (tree / "usr").rglob("*") if p.is_file())
    box = tools.sandbox(binds=(work,), ro_binds=(tree,))
    rows = []
    for name, (mkfs, preset) in CANDIDATES.items():
        image = work / "usr.img"
        image.unlink(missing_ok=True)
        start = time.monotonic()
        if mkfs[0] == "mksquashfs-zstd":
            argv = ["mksquashfs", str(tree / "usr"), str(image), "-comp", "zstd",
                    "-Xcompression-level", "15", "-noappend", "-quiet", "-mkfs-time", "0",
                    "-all-time", "0"]
        else:
            argv = [*mkfs, str(image), str(tree / "usr")]
        box.run(runner, argv, timeout=3600)
        mkfs_s = time.monotonic() - start
        size = image.stat().st_size
        download, xz_s = size, 0.0
        if preset:
            start = time.monotonic()
            box.run(runner, ["xz", preset, "-T0", "--block-size=16MiB", "-c", str(image)],
                    stdout=work / "usr.img.xz", timeout=3600)
            xz_s = time.monotonic() - start
            download = (work / "usr.img.xz").stat().st_size
        rows.append({"format": name, "slot_mb": round(size / 1e6, 1),
                     "download_mb": round(download / 1e6, 1), "mkfs_s": round(mkfs_s, 1),
                     "xz_s": round(xz_s, 1)})
    print(f"/usr tree: {usr_bytes / 1e6:.1f} MB in files")
    print(f"{'format':<24}{'slot MB':>9}{'download MB':>13}{'mkfs s':>8}{'xz s':>7}"
          f"{'build s':>9}")
    for r in rows:
        print(f"{r['format']:<24}{r['slot_mb']:>9}{r['download_mb']:>13}{r['mkfs_s']:>8}"
              f"{r['xz_s']:>7}{r['mkfs_s'] + r['xz_s']:>9.1f}")
    results = REPO / "bench/results"
    results.mkdir(exist_ok=True)
    (results / "usr_formats.json").write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
