#!/usr/bin/env python3
"""Serial provisioning figures: payload throughput of a file push as a share of line rate
at an emulated 115200 baud (a proxy paces QEMU's serial socket at 11520 bytes/s each way),
next to what base64 over a shell could reach at best (3/4 of line rate), and the time to
provision one device end to end with `appsdk provision serial` (attach, identity, a file,
status). Boots the given build once in QEMU (TCG). Prints; asserts nothing.

    python3 bench/serial_push.py BUILD_DIR [--size-kib 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sdk"))
sys.path.insert(0, str(REPO / "tests/vm"))

LINE_RATE = 11520.0  # 115200 baud, 8N1: 10 bits per byte


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path)
    parser.add_argument("--size-kib", type=int, default=256)
    args = parser.parse_args()

    from lineproxy import LineProxy
    from vmlib import Vm, disk_copy, free_port, ovmf_vars

    from appsdk.contract.buildinfo import load_record
    from appsdk.deliver.filepush import push_bytes
    from appsdk.deliver.provision_serial import DevicePlan, FileSpec, provision_serial
    from appsdk.emulate.qemu import VmSpec, qemu_argv
    from appsdk.spec.boards import load_board

    record = load_record(args.build)
    work = Path(tempfile.mkdtemp(prefix="appsdk-serial-bench-"))
    disk = disk_copy(record.path("image"), work / "disk.img", 6 * 1024**3)
    qemu_port = free_port()
    spec = VmSpec(board=record.board if record.board.emulators else load_board("x86-uefi"),
                  disk=disk, snapshot=False,
                  serial_port=qemu_port, accel="tcg", no_reboot=True,
                  vars_file=ovmf_vars(work))
    proxy = LineProxy(qemu_port)
    vm = Vm(qemu_argv(spec), proxy.port, work, "bench")
    try:
        vm.shell.expect(r"appsdk: IMAGE_ID=\S+ IMAGE_VERSION=\S+ booted", 300)
        vm.shell.attach()
        proxy.rate = LINE_RATE
        payload = os.urandom(args.size_kib * 1024)
        push = push_bytes(vm.shell, payload, "/var/tmp/bench.bin", line_rate=LINE_RATE)
        share = push.bytes_per_second / LINE_RATE

        # End to end on the same throttled line: a fresh connection, as the CLI makes one.
        vm.console.close()
        blob = work / "config.bin"
        blob.write_bytes(os.urandom(16 * 1024))
        key = work / "key.pub"
        key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench@x\n")
        plan = DevicePlan(serial="BENCH1", hostname="bench-1", authorized_keys=(key,),
                          files=(FileSpec(blob, "/var/lib/bench/config.bin"),))
        start = time.monotonic()
        report = provision_serial(f"socket://127.0.0.1:{proxy.port}", plan,
                                  line_rate=LINE_RATE)
        end_to_end = time.monotonic() - start
    finally:
        vm.close()
        proxy.close()
    figures = {
        "line_rate_bytes_per_s": LINE_RATE,
        "push_kib": args.size_kib,
        "push_seconds": round(push.seconds, 1),
        "push_bytes_per_s": round(push.bytes_per_second),
        "push_share_of_line_rate": round(share, 3),
        "base64_over_shell_upper_bound": 0.75,
        "goal_share": 0.85,
        "push_chunks": push.chunks,
        "provision_one_device_s": round(end_to_end, 1),
        "provision_ok": report.ok,
        "provision_error": report.error,
    }
    from results_file import report

    report("serial_push", figures)


if __name__ == "__main__":
    main()
