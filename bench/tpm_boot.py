#!/usr/bin/env python3
"""Boot time with /var sealed to the TPM (var.encrypt: tpm2) against a plain /var: two builds
of one appliance that differ only in var.encrypt, both under Secure Boot (q35-ovmf-sb,
started from a store with the key set enrolled), each with its own fresh swtpm, under TCG.
First boot (repart makes and seals /var, the recovery key is enrolled) and a second boot
(the initrd unseals /var), side by side.

    appsdk build DIR --output /tmp/plain       # var.encrypt: none
    appsdk build DIR --output /tmp/sealed      # the same with var.encrypt: tpm2
    python3 bench/tpm_boot.py /tmp/plain /tmp/sealed --keys KEYSET [--runs N]

Prints seconds from QEMU start to the kernel, the image's banner and the health check;
asserts nothing. (Update time does not depend on /var: sysupdate writes the slots and the
ESP, never /var.)
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from boot_marks import mean_healthy, print_table, watch

from appsdk.contract.buildinfo import load_record
from appsdk.core.runner import Runner
from appsdk.emulate import swtpm
from appsdk.emulate.qemu import VmSpec, qemu_argv
from appsdk.spec.boards import load_board
from appsdk.trust import secureboot


def boot(disk: Path, vars_fd: Path, tpm: Path, log: Path, timeout: float = 900
         ) -> dict[str, float]:
    """One boot to the health check (then the power goes): seconds to each mark."""
    with swtpm.running(tpm) as socket:
        argv = qemu_argv(VmSpec(board=load_board("x86-uefi"), disk=disk, snapshot=False,
                                vars_file=vars_fd, emulator="q35-ovmf-sb", no_reboot=True,
                                tpm_socket=socket))
        # linger: let the journal reach /var before the power goes
        return watch(argv, log, "healthy", timeout, linger=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plain", type=Path)
    parser.add_argument("sealed", type=Path)
    parser.add_argument("--keys", type=Path, required=True, help="the Secure Boot key set")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--logs", type=Path, help="keep each boot's console log here")
    args = parser.parse_args()
    keyset = secureboot.load(args.keys)
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="appsdk-bench-tpm-") as name:
        tmp = Path(name)
        for run in range(args.runs):
            for label, build in (("plain", args.plain), ("sealed", args.sealed)):
                image = load_record(build).path("image")
                disk, tpm = tmp / f"{label}.img", tmp / f"tpm-{label}-{run}"
                subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
                subprocess.run(["truncate", "-s", "6G", str(disk)], check=True)
                vars_fd = secureboot.write_vars(keyset, "bench",
                                                Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
                                                tmp / f"vars-{label}.fd", Runner())
                for which in ("first boot", "second boot"):
                    log = (args.logs or tmp) / f"{label}-{run}-{which.split()[0]}.log"
                    rows.setdefault(f"{label}, {which}", []).append(
                        boot(disk, vars_fd, tpm, log))
    print_table(rows, 22)
    for which in ("first boot", "second boot"):
        ratio = mean_healthy(rows[f"sealed, {which}"]) / mean_healthy(rows[f"plain, {which}"])
        print(f"ratio sealed / plain to the health check, {which} (means of {args.runs}): "
              f"{ratio:.2f}")


if __name__ == "__main__":
    main()
