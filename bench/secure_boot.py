#!/usr/bin/env python3
"""Boot time with Secure Boot enforced against without it: the same signed image, the same
firmware (OVMF's Secure Boot build, q35-ovmf-sb), under TCG. "Without" is the machine left
in setup mode (loader.conf's secure-boot-enroll set to off on that copy), so the firmware
checks nothing; "with" is the machine after systemd-boot enrolled the image's key set.
(The signing time per build is the `sign` stage's line in `appsdk build`'s output.)

    appsdk build DIR                      # an appliance with secure_boot: true
    python3 bench/secure_boot.py DIR/build/x86-uefi [--runs N]

Prints figures (seconds from QEMU start: kernel start, the image's banner, health check
passed) side by side; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from boot_marks import mean_healthy, print_table, watch

from appsdk.contract.buildinfo import load_record
from appsdk.emulate.qemu import VmSpec, qemu_argv
from appsdk.spec.boards import load_board

ENROLLED = "Custom Secure Boot keys successfully enrolled"


def boot(disk: Path, vars_fd: Path, log: Path, until: str,
         timeout: float = 600) -> dict[str, float]:
    """One boot (QEMU -no-reboot), serial to `log`: seconds from start to each mark."""
    argv = qemu_argv(VmSpec(board=load_board("x86-uefi"), disk=disk, snapshot=False,
                            vars_file=vars_fd, emulator="q35-ovmf-sb", no_reboot=True))
    return watch(argv, log, until, timeout, extra={"enrolled": ENROLLED})


def esp_offset(disk: Path) -> int:
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    esp = next(p for p in table["partitions"] if p.get("name") == "esp")
    return int(esp["start"]) * int(table.get("sectorsize", 512))


def without_enrollment(disk: Path, tmp: Path) -> None:
    at = f"{disk}@@{esp_offset(disk)}"
    conf = tmp / "loader.conf"
    subprocess.run(["mcopy", "-o", "-i", at, "::loader/loader.conf", str(conf)], check=True)
    conf.write_text(re.sub(r"secure-boot-enroll \S+", "secure-boot-enroll off",
                           conf.read_text()))
    subprocess.run(["mcopy", "-o", "-i", at, str(conf), "::loader/loader.conf"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    record = load_record(args.build)
    if record.secure_boot is None:
        raise SystemExit(f"{args.build}: not a secure_boot build")
    image = record.path("image")
    rows: dict[str, list[dict[str, float]]] = {"setup mode (no SB)": [], "SB enforced": []}
    with tempfile.TemporaryDirectory(prefix="appsdk-bench-sb-") as name:
        tmp = Path(name)
        for run in range(args.runs):
            for label in rows:
                disk, vars_fd = tmp / "disk.img", tmp / "vars.fd"
                subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
                subprocess.run(["truncate", "-s", "6G", str(disk)], check=True)
                shutil.copyfile("/usr/share/OVMF/OVMF_VARS_4M.fd", vars_fd)
                if label.startswith("setup"):
                    without_enrollment(disk, tmp)
                else:
                    boot(disk, vars_fd, tmp / f"enroll-{run}.log", "enrolled", 120)
                log = tmp / f"{run}-{'sb' if label.startswith('SB') else 'setup'}.log"
                rows[label].append(boot(disk, vars_fd, log, "healthy"))
    print_table(rows, 20)
    print(f"ratio SB / no SB to health check (means of {args.runs} runs): "
          f"{mean_healthy(rows['SB enforced']) / mean_healthy(rows['setup mode (no SB)']):.2f}")


if __name__ == "__main__":
    main()
