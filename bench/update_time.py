#!/usr/bin/env python3
"""`systemd-sysupdate update` time with /var sealed to the TPM against a plain /var: two
pairs of builds (v1 and v2 of one appliance, var.encrypt none and tpm2, the same
update.compression), each v1 booted under Secure Boot with its own fresh swtpm, then v2
installed from a local release server. Side by side, under TCG.

    python3 bench/update_time.py PLAIN_V1 PLAIN_V2 SEALED_V1 SEALED_V2 \\
        --keys KEYSET --signing-key DIR --port PORT [--runs N] [--logs DIR]

The builds' update URL must be http://10.0.2.2:PORT/ (QEMU's host). Prints seconds of the
update run and the ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from appsdk.contract.buildinfo import load_record
from appsdk.core.runner import Runner
from appsdk.deliver.console import SerialConsole, Shell
from appsdk.emulate import swtpm
from appsdk.emulate.qemu import VmSpec, qemu_argv
from appsdk.spec.boards import load_board
from appsdk.trust import keys, secureboot
from appsdk.update.release import release
from appsdk.update.serve import serve_in_thread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def update_once(v1: Path, keyset: secureboot.SecureBootKeys, tmp: Path,
                log: Path) -> float:
    """Boot v1 on a fresh disk and TPM, then time `update` against the served release."""
    disk, tpm = tmp / "disk.img", tmp / "tpm"
    subprocess.run(["rm", "-rf", str(tpm)], check=True)
    subprocess.run(["cp", "--sparse=always", str(load_record(v1).path("image")), str(disk)],
                   check=True)
    subprocess.run(["truncate", "-s", "6G", str(disk)], check=True)
    vars_fd = secureboot.write_vars(keyset, "bench", Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
                                    tmp / "vars.fd", Runner())
    port = free_port()
    with swtpm.running(tpm) as tpm_socket:
        argv = qemu_argv(VmSpec(board=load_board("x86-uefi"), disk=disk, snapshot=False,
                                serial_port=port, vars_file=vars_fd, emulator="q35-ovmf-sb",
                                no_reboot=True, tpm_socket=tpm_socket))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        console = SerialConsole(f"socket://127.0.0.1:{port}", connect_timeout=30)
        try:
            shell = Shell(console, log=log)
            shell.expect(r"appsdk: IMAGE_ID=\S+ IMAGE_VERSION=\S+ booted", 900)
            shell.login(timeout=600)
            shell.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=90",
                      timeout=120)
            started = time.monotonic()
            status, out = shell.run("appsdk-update --no-pager update 2>&1", timeout=1200)
            seconds = time.monotonic() - started
            if status != 0:
                raise SystemExit(f"update failed ({status}):\n{out[-2000:]}")
            return seconds
        finally:
            console.close()
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("plain_v1", "plain_v2", "sealed_v1", "sealed_v2"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--keys", type=Path, required=True, help="the Secure Boot key set")
    parser.add_argument("--signing-key", type=Path, required=True,
                        help="the update signing key's directory (appsdk keys)")
    parser.add_argument("--port", type=int, required=True, help="the builds' update URL port")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--logs", type=Path, help="keep each boot's console log here")
    args = parser.parse_args()
    keyset = secureboot.load(args.keys)
    key = keys.load(args.signing_key)
    times: dict[str, list[float]] = {"plain": [], "sealed": []}
    with tempfile.TemporaryDirectory(prefix="appsdk-bench-update-") as name:
        tmp = Path(name)
        logs = args.logs or tmp
        logs.mkdir(parents=True, exist_ok=True)
        pairs = {"plain": (args.plain_v1, args.plain_v2),
                 "sealed": (args.sealed_v1, args.sealed_v2)}
        for label, (v1, v2) in pairs.items():
            www = release(tmp / f"www-{label}", [v1, v2], key, Runner()).directory
            server = serve_in_thread(www, port=args.port)
            try:
                for run in range(args.runs):
                    times[label].append(update_once(v1, keyset, tmp,
                                                    logs / f"update-{label}-{run}.log"))
            finally:
                server.shutdown()
                server.server_close()  # the next pair's server takes the same port
    for label, runs in times.items():
        print(f"{label:<8} /var: systemd-sysupdate update " +
              ", ".join(f"{s:.1f}" for s in runs) + " s (TCG)")
    ratio = (sum(times["sealed"]) / len(times["sealed"])) / (
        sum(times["plain"]) / len(times["plain"]))
    print(f"ratio sealed / plain (means of {args.runs}): {ratio:.2f}")


if __name__ == "__main__":
    main()
