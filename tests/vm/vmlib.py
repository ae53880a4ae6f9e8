"""QEMU machines for VM tests: a process plus a Shell on its serial socket."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import appsdk
from appsdk.core.progress import TextReporter
from appsdk.core.runner import Runner
from appsdk.deliver.console import SerialConsole, Shell
from appsdk.pipeline.stages.rootfs import TPM2_PACKAGES
from appsdk.trust import keys, secureboot
from appsdk.trust.secureboot import SecureBootKeys

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def disk_copy(image: Path, target: Path, size: int) -> Path:
    """A sparse working copy of a built image, grown like a real (bigger) disk."""
    subprocess.run(["cp", "--sparse=always", str(image), str(target)], check=True)
    os.truncate(target, size)
    return target


class Vm:
    def __init__(self, argv: list[str], port: int, log_dir: Path, name: str) -> None:
        self.log_dir = log_dir
        self.name = name
        self.qemu_log_path = log_dir / f"{name}.qemu.log"
        self.qemu_log = self.qemu_log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.qemu_log,
                                     stderr=subprocess.STDOUT)
        self.console = SerialConsole(f"socket://127.0.0.1:{port}", connect_timeout=30)
        self.console_log = log_dir / f"{name}.console.log"
        self.shell = Shell(self.console, log=self.console_log)
        self.started = time.monotonic()

    def wait_exit(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.console.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.qemu_log.close()
        # What QEMU said, where a failing test's report shows it (CI keeps only the report).
        said = self.qemu_log_path.read_text(errors="replace").strip()
        if said or self.proc.returncode not in (0, -15):
            print(f"{self.name}: QEMU exit {self.proc.returncode}: {said[-1500:]}",
                  file=sys.stderr)


EARLY_PANIC = "Kernel panic - not syncing"
KERNEL_UP = "Run /init as init process"
ESP_TYPES = {"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ef"}


def esp_extent(disk: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the disk's EFI system partition, as sfdisk reads the GPT."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    esp = next(p for p in table["partitions"] if p["type"] in ESP_TYPES)
    sector = int(table.get("sectorsize", 512))
    return esp["start"] * sector, esp["size"] * sector


class PreBoot:
    """What a boot writes before its kernel runs: the ESP (systemd-boot counts a try by
    renaming the UKI, and refreshes its random seed) and the UEFI variable store. Saved so
    that a boot the emulator broke before the initrd can be undone and run again exactly."""

    def __init__(self, disk: Path, vars_fd: Path | None) -> None:
        self.disk, self.vars_fd = disk, vars_fd
        self.offset, self.size = esp_extent(disk)
        self.saved = Path(tempfile.mkdtemp(prefix="preboot-"))
        self._copy(disk, self.saved / "esp", self.offset, 0)
        if vars_fd is not None:
            shutil.copyfile(vars_fd, self.saved / "vars")

    def _copy(self, src: Path, dst: Path, skip: int, seek: int) -> None:
        subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", f"skip={skip}",
                        f"seek={seek}", f"count={self.size}", "conv=notrunc,fsync",
                        "iflag=skip_bytes,count_bytes", "oflag=seek_bytes", "status=none"],
                       check=True)

    def restore(self) -> None:
        self._copy(self.saved / "esp", self.disk, 0, self.offset)
        if self.vars_fd is not None:
            shutil.copyfile(self.saved / "vars", self.vars_fd)

    def discard(self) -> None:
        shutil.rmtree(self.saved, ignore_errors=True)


def kernel_panicked_early(vm: Vm, timeout: float = 300) -> bool:
    """Did the kernel panic before it started the initrd? Looks ahead only: the output stays
    for the test's own expects. No answer within `timeout` counts as no."""
    try:
        seen = vm.shell.expect(f"{KERNEL_UP}|{EARLY_PANIC}", timeout, consume=False)
    except Exception:  # CommandTimeout, or the console closing under us
        return False
    return bool(seen.group(0) == EARLY_PANIC)


def start(launch: Callable[[str], Vm], name: str, disk: Path, vars_fd: Path | None,
          retry_early_panic: bool = True) -> Vm:
    """Start a boot with `launch` (one QEMU process). Under multi-threaded TCG, QEMU 7.2
    now and then executes a stale int3 left by the kernel's own code patching ("Oops: int3"
    in sched_clock_cpu, FIELD-NOTES: about one boot in ten on a loaded machine): the kernel
    panics seconds in, before anything of the image has run. Such a boot is undone (ESP and
    variables as they were before it) and run once more, so the retry is the same boot,
    boot counting included. A second such panic in a row is left for the test to see."""
    if not retry_early_panic:
        return launch(name)
    before = PreBoot(disk, vars_fd)
    try:
        vm = launch(name)
        if not kernel_panicked_early(vm):
            return vm
        vm.close()
        before.restore()
        print(f"{name}: kernel panicked before the initrd (emulator); booting again")
        return launch(f"{name}-retry")
    finally:
        before.discard()


@contextlib.contextmanager
def running(argv: list[str], port: int, log_dir: Path, name: str, disk: Path,
            vars_fd: Path | None, retry_early_panic: bool = True) -> Iterator[Vm]:
    """One boot of `argv` (see `start` for the retry), closed on the way out."""
    vm = start(lambda n: Vm(argv, port, log_dir, n), name, disk, vars_fd, retry_early_panic)
    try:
        yield vm
    finally:
        vm.close()


def ovmf_vars(directory: Path) -> Path:
    target = directory / "OVMF_VARS.fd"
    if not target.exists():
        shutil.copyfile("/usr/share/OVMF/OVMF_VARS_4M.fd", target)
    return target


def watch_boot(vm: Vm, up_pattern: str, timeout: float = 600) -> tuple[str, str]:
    """Follow one boot: which /usr slot its UKI names, and whether it came up (`up_pattern`
    on the console) or the machine went away (reset, reboot or power-off: QEMU exits with
    -no-reboot). Returns (version, "up" | "reset" | "early-panic")."""
    import re

    # The trailing \s matters: the line arrives in pieces, and \S+ alone would match "2.".
    version = vm.shell.expect(r"verity_usr_data=/dev/disk/by-partlabel/usr_(\S+)\s",
                              300).group(1)
    # The emulator's own early panic (see `running`) hangs the machine before anything of
    # the image runs, with no watchdog armed yet: say so at once instead of timing out.
    if vm.shell.expect(f"{KERNEL_UP}|{EARLY_PANIC}", 300).group(0) == EARLY_PANIC:
        vm.proc.kill()
        return version, "early-panic"
    deadline = time.monotonic() + timeout
    pattern = re.compile(up_pattern)
    while time.monotonic() < deadline:
        if vm.proc.poll() is not None:
            return version, "reset"
        try:
            vm.shell.expect(pattern, 2)
            return version, "up"
        except Exception:  # CommandTimeout, or the console closing under us
            time.sleep(0.5)
    raise AssertionError(f"boot of {version} neither came up nor reset in {timeout}s")


@contextlib.contextmanager
def vm_boot(disk: Path, vars_fd: Path | None, log_dir: Path, name: str,
            board: str = "x86-uefi", retry_early_panic: bool = True,
            emulator: str | None = None, tpm: Path | None = None) -> Iterator[Vm]:
    """Boot a disk with appsdk's QEMU command line for the board (TCG, serial on a free
    port, -no-reboot so every reset or power-off ends the process: one boot, one Vm).
    `vars_fd`: the machine's UEFI variable store (firmware_vars), kept across its boots.
    `tpm`: the state directory of its TPM (swtpm), likewise kept: the same device."""
    from appsdk.emulate import swtpm
    from appsdk.emulate.qemu import VmSpec, qemu_argv
    from appsdk.spec.boards import load_board

    port = free_port()
    with contextlib.ExitStack() as stack:
        socket_path = stack.enter_context(swtpm.running(tpm)) if tpm is not None else None
        spec = VmSpec(board=load_board(board), disk=disk, snapshot=False, serial_port=port,
                      accel="tcg", no_reboot=True, vars_file=vars_fd, emulator=emulator,
                      tpm_socket=socket_path)
        vm = stack.enter_context(running(qemu_argv(spec), port, log_dir, name, disk, vars_fd,
                                         retry_early_panic))
        yield vm


SYSUPDATE = "appsdk-update --no-pager"  # systemd-sysupdate, synced before it reports success
TRANSFER_TIMEOUT = "Transfer failed: Timeout was reached"


def sysupdate_update(shell: Shell, timeout: float = 900, attempts: int = 3) -> tuple[int, str]:
    """`systemd-sysupdate update` on the device, run again when (and only when) a download
    stalled: once in CI a transfer through QEMU's user-mode network hung until curl's
    low-speed timeout. A device's update timer would simply try again later. Any other
    result (installed, or refused for a hash, a signature, a short file) is returned at
    once, and callers assert that no timeout is left in what they judge."""
    outputs = []
    for _ in range(attempts):
        status, out = shell.run(f"{SYSUPDATE} update 2>&1", timeout=timeout)
        outputs.append(out)
        if TRANSFER_TIMEOUT not in out:
            break
        print(f"sysupdate: a download timed out (exit {status}); trying again")
    return status, "\n--- try again ---\n".join(outputs)

TSS_PACKAGES = TPM2_PACKAGES
SB_EMULATOR = "q35-ovmf-sb"  # OVMF's Secure Boot build (x86-uefi board profile)
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def hello_copy(dest: Path) -> Path:
    """examples/hello at `dest`, with the TSS libraries that var.encrypt: tpm2 adds in its
    base.packages: every x86 build of the VM tests (the TPM module's encrypted one too) then
    has the same package set, so one rootfs serves them all (one mmdebstrap fewer). Without
    a TPM in the machine the libraries are inert."""
    shutil.copytree(REPO / "examples/hello", dest, ignore=shutil.ignore_patterns("build"))
    config = dest / "appliance.yaml"
    text = config.read_text()
    packages = "  packages: [python3-minimal, libpython3-stdlib]\n"
    assert packages in text, f"{config}: base.packages changed; update hello_copy"
    config.write_text(text.replace(packages,
                                   packages[:-2] + ", " + ", ".join(TSS_PACKAGES) + "]\n"))
    return dest


def signed_hello(dest: Path, keyset: SecureBootKeys) -> Path:
    """examples/hello (hello_copy) signed for Secure Boot with `keyset`, which it never
    enrolls itself (enroll: off): the same images boot on plain OVMF (nothing is checked
    there) and on q35-ovmf-sb started from a store holding the key set (sb_vars), where the
    firmware checks every binary. So the update and rollback scenarios run under Secure
    Boot at no extra boot, and the rest as before."""
    config = hello_copy(dest) / "appliance.yaml"
    config.write_text(config.read_text()
                      + f"secure_boot:\n  keys: {keyset.directory}\n  enroll: 'off'\n")
    return dest


def sealed_hello(dest: Path, base: Path) -> Path:
    """A copy of `base` (signed_hello) with /var sealed to the TPM (var.encrypt: tpm2), its
    update files made with gzip (gzip_updates: these builds are many, and xz's installs are
    the shared images'). Its devices boot with a TPM: vm_boot(tpm=...)."""
    shutil.copytree(base, dest)
    config = dest / "appliance.yaml"
    config.write_text(config.read_text() + "var:\n  encrypt: tpm2\n")
    gzip_updates(dest)
    return dest


def gzip_updates(app: Path) -> None:
    """Make an appliance copy's update files with gzip (update.compression): a sixth of xz's
    time to make and about 0.4x to unpack (bench/compression.py). For the images whose
    updates no device of the default (xz) installs; the shared hello images keep xz."""
    config = app / "appliance.yaml"
    text = config.read_text()
    assert "\nupdate:\n" in text, f"{config}: no update section to add compression to"
    config.write_text(text.replace("\nupdate:\n", "\nupdate:\n  compression: gzip\n", 1))


def sb_vars(directory: Path, keyset: SecureBootKeys) -> Path:
    """A machine's UEFI variable store with `keyset` enrolled and Secure Boot on."""
    target = directory / "OVMF_VARS.fd"
    if not target.exists():
        secureboot.write_vars(keyset, "hello", Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
                              target, Runner())
    return target


def efi_global(shell: Shell, name: str) -> str:
    """The value of a global EFI variable as hex bytes (SecureBoot: "01" when enforced).
    efivarfs files cannot seek: read through a pipe; 4 attribute bytes come first."""
    return " ".join(shell.output(f"cat /sys/firmware/efi/efivars/{name}-{EFI_GLOBAL} "
                                 "2>/dev/null | od -An -tx1").split()[4:])  # "": no such var


def esp_put(disk: Path, source: Path, name: str) -> None:
    """Write a file into the ESP's EFI/Linux of a disk that is not running (mtools)."""
    offset, _ = esp_extent(disk)
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{offset}", str(source),
                    f"::EFI/Linux/{name}"], check=True)


def tampered(uki: Path, out: Path) -> Path:
    """A copy of `uki` with one byte changed, in the middle (the kernel or the initrd)."""
    data = bytearray(uki.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def build_hello(app: Path, version: str, out: Path, key: keys.SigningKey,
                port: int) -> appsdk.BuildResult:
    return appsdk.build(app, board="x86-uefi", version=version, output=out,
                        reporter=TextReporter(sys.stderr), key_dir=key.home,
                        update_url=f"http://10.0.2.2:{port}/")
