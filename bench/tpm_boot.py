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
import re
import subprocess
import tempfile
import time
from pathlib import Path

from appsdk.contract.buildinfo import load_record
from appsdk.core.runner import Runner
from appsdk.emulate import swtpm
from appsdk.emulate.qemu import VmSpec, qemu_argv
from appsdk.spec.boards import load_board
from appsdk.trust import secureboot

MARKS = {"kernel": "Linux version", "banner": r"appsdk: IMAGE_ID=\S+ IMAGE_VERSION=\S+ booted",
         "healthy": r"Finished .*appsdk health check"}


def boot(disk: Path, vars_fd: Path, tpm: Path, log: Path, timeout: float = 900
         ) -> dict[str, float]:
    """One boot to the health check (then the power goes): seconds to each mark."""
    log.unlink(missing_ok=True)
    seen: dict[str, float] = {}
    with swtpm.running(tpm) as socket:
        argv = qemu_argv(VmSpec(board=load_board("x86-uefi"), disk=disk, snapshot=False,
                                vars_file=vars_fd, emulator="q35-ovmf-sb", no_reboot=True,
                                tpm_socket=socket))
        argv[argv.index("stdio")] = f"file:{log}"
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while time.monotonic() - started < timeout and proc.poll() is None:
                text = log.read_text(errors="replace") if log.exists() else ""
                for name, pattern in MARKS.items():
                    if name not in seen and re.search(pattern, text):
                        seen[name] = time.monotonic() - started
                if "healthy" in seen:
                    time.sleep(5)  # let the journal reach /var before the power goes
                    break
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait()
    return seen


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
    print(f"{'':<22}" + "".join(f"{m:>10}" for m in MARKS) + "   (s from QEMU start, TCG)")
    for label, runs in rows.items():
        for marks in runs:
            print(f"{label:<22}" + "".join(f"{marks.get(m, float('nan')):>10.1f}"
                                           for m in MARKS))

    def mean(label: str) -> float:
        times = [r["healthy"] for r in rows[label] if "healthy" in r]
        return sum(times) / len(times) if times else float("nan")

    for which in ("first boot", "second boot"):
        print(f"ratio sealed / plain to the health check, {which} (means of {args.runs}): "
              f"{mean(f'sealed, {which}') / mean(f'plain, {which}'):.2f}")


if __name__ == "__main__":
    main()
