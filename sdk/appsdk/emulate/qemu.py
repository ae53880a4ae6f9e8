"""Boot a built image in QEMU the way the board's emulator profile says (firmware, machine,
watchdog), with the serial console on the terminal or a TCP port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.cache import cache_root, key_of
from appsdk.core.errors import CommandFailed, ConfigError, Option, PathError, ToolMissing
from appsdk.image.gpt import disk_table
from appsdk.spec.boards import EmulatedBoard, Emulator, FirmwareRef, HostFile


@dataclass(frozen=True)
class VmSpec:
    board: EmulatedBoard
    disk: Path
    snapshot: bool = True  # writes go to a throw-away overlay; the image stays as built
    serial_port: int | None = None  # None: console on stdio
    forward: tuple[tuple[int, int], ...] = ()  # (host port, guest port) on 127.0.0.1
    memory_mib: int | None = None
    accel: str = "tcg"
    no_reboot: bool = False
    vars_file: Path | None = None  # UEFI variable store (firmware_vars); None for -bios
    emulator: str | None = None  # one of the board's emulators; None: its first
    tpm_socket: Path | None = None  # swtpm's control socket: the machine gets the board's TPM


def firmware_file(ref: FirmwareRef, what: str, board: EmulatedBoard) -> Path | None:
    """A firmware file named by host path or as component:file of a pinned manifest
    (fetched and verified on first use). None if a host path does not exist."""
    if isinstance(ref, HostFile):
        return ref.path if ref.path.exists() else None
    from appsdk.spec.firmware import fetch

    path = fetch([ref.component])[ref.component] / ref.file
    if not path.is_file():
        raise ConfigError(f"{what} {str(ref)!r} of board {board.name}: {ref.file} is not one "
                          f"of the files of firmware {ref.component}", file=str(board.source))
    return path


def first_existing(paths: tuple[FirmwareRef, ...], what: str, board: EmulatedBoard) -> Path:
    for candidate in paths:
        found = firmware_file(candidate, what, board)
        if found is not None:
            return found
    # Only host paths get here: a pinned component:file is fetched or fails in firmware_file.
    packages = sorted({pkg for prefix, pkg in _FIRMWARE_PACKAGES.items()
                       if any(p.startswith(prefix) for p in paths)})
    raise ToolMissing(f"{what} for board {board.name} not found (looked at {', '.join(paths)})",
                      hint=(f"apt-get install {' '.join(packages)}" if packages else
                            "install the firmware, or name a pinned one as component:file")
                      + f" (board data: {board.source})")


_FIRMWARE_PACKAGES = {"/usr/share/OVMF/": "ovmf", "/usr/share/AAVMF/": "qemu-efi-aarch64",
                      "/usr/lib/u-boot/": "u-boot-qemu"}


def firmware_vars(board: EmulatedBoard, directory: Path,
                  emulator: str | None = None) -> Path | None:
    """A private, writable copy of the UEFI variable store (never the system one); None
    for firmware without one (U-Boot keeps its variables in a file on the ESP)."""
    em = board.emulator_named(emulator)
    if not em.firmware_vars:
        return None
    source = first_existing(em.firmware_vars, "UEFI variable store", board)
    target = directory / f"{board.name}-{em.name}-efivars.fd"
    if not target.exists():
        shutil.copyfile(source, target)
    return target


def persistent_vars(board: EmulatedBoard, path: Path, emulator: str | None = None) -> Path:
    """The machine's UEFI variable store kept in `path` across runs (Secure Boot keys,
    boot entries): used as it is if it exists (e.g. from `appsdk keys vars`), else made
    from the emulator's template."""
    em = board.emulator_named(emulator)
    if not em.firmware_vars:
        raise ConfigError(f"emulator {em.name} of board {board.name} keeps no UEFI variable "
                          "store", field=Option("vars"), hint="leave out the store, or choose "
                          "an emulator with UEFI firmware")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ConfigError("is not a regular file (a UEFI variable store is needed)",
                              file=str(path), field=Option("vars"))
        return path
    source = first_existing(em.firmware_vars, "UEFI variable store", board)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, path)
    except OSError as exc:
        raise PathError.from_oserror(exc, "cannot make the variable store",
                                     Option("vars")) from None
    return path


def firmware_args(spec: VmSpec, em: Emulator) -> list[str]:
    if em.bios:
        return ["-bios", str(first_existing((em.bios,), "firmware", spec.board))]
    code = first_existing(em.firmware_code, "UEFI firmware", spec.board)
    if spec.vars_file is None:
        raise ConfigError("internal: VmSpec.vars_file must be set for UEFI flash firmware")
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={spec.vars_file}"]


def qemu_argv(spec: VmSpec) -> list[str]:
    em = spec.board.emulator_named(spec.emulator)
    drive = f"if=none,id=disk0,format=raw,file={spec.disk}"
    if spec.snapshot:
        drive += ",snapshot=on"
    argv = [
        em.qemu, "-machine", em.machine, "-accel", spec.accel, "-cpu", em.cpu,
        "-smp", "2", "-m", str(spec.memory_mib or em.memory_mib),
        "-display", "none", "-nodefaults", "-no-user-config",
        *firmware_args(spec, em),
        "-drive", drive,
        # bootindex=0: without it OVMF tries other boot options first (+12 s).
        "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
        "-device", "virtio-rng-pci",
    ]
    if spec.serial_port is None:
        argv += ["-serial", "stdio"]
    else:
        argv += ["-serial", f"tcp:127.0.0.1:{spec.serial_port},server=on,wait=off"]
    if em.watchdog:
        argv += ["-device", em.watchdog, "-action", "watchdog=reset"]
    netdev = "user,id=net0"
    for host, guest in spec.forward:
        netdev += f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
    argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"]
    if spec.tpm_socket is not None:
        if not em.tpm:
            raise ConfigError(f"emulator {em.name} of board {spec.board.name} has no TPM",
                              hint="pick an emulator with `tpm:` in the board profile")
        if "," in str(spec.tpm_socket):  # QEMU would split its option there
            raise PathError(f"{spec.tpm_socket}: a TPM socket path cannot hold a comma",
                            hint="keep the TPM state in a directory without one")
        argv += ["-chardev", f"socket,id=chrtpm,path={spec.tpm_socket}",
                 "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                 "-device", f"{em.tpm},tpmdev=tpm0"]
    if spec.no_reboot:
        argv.append("-no-reboot")
    return [*argv, *em.extra_args]


KVM_PROBE_S = 15.0


def kvm_verdict(serial: bytes, stderr: bytes) -> bool:
    """KVM is usable if the board's firmware, run under it, wrote to its serial console
    and KVM reported no internal error. Merely staying alive proves nothing: on an
    internal error QEMU stops the guest but keeps running (seen with OVMF on hosts whose
    KVM fails on the firmware's first FPU instructions)."""
    return bool(serial.strip()) and not _kvm_failed(stderr)


def _kvm_failed(stderr: bytes) -> bool:
    return any(marker in stderr for marker in (b"KVM internal error", b"emulation failure"))


def _run_probe(argv: list[str], seconds: float) -> tuple[bytes, bytes]:
    """Run until the guest writes to its serial console (stdout), KVM reports an internal
    error (stderr), QEMU exits, or `seconds` pass."""
    import select
    import time

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    got = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    deadline = time.monotonic() + seconds
    try:
        while (not got[out].strip() and not _kvm_failed(got[err])
               and proc.poll() is None and time.monotonic() < deadline):
            for fd in select.select([out, err], [], [], 0.5)[0]:
                got[fd] += os.read(fd, 4096)
    finally:
        proc.kill()
        rest_out, rest_err = proc.communicate()
    return got[out] + rest_out, got[err] + rest_err


def kvm_works(board: EmulatedBoard, emulator: str | None = None) -> bool:
    """Whether `appsdk run` may use KVM for this board's emulator: its own firmware is
    booted under KVM with an empty disk (see kvm_verdict). The answer is cached per
    QEMU binary and firmware."""
    em = board.emulator_named(emulator)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or not shutil.which(em.qemu):
        return False
    key = key_of(em.qemu, em.machine, em.cpu, em.bios, em.firmware_code)
    marker = cache_root() / f"kvm-probe-{board.name}-{em.name}-{key}"
    if marker.exists():
        return marker.read_text().split()[0] == "yes"
    with tempfile.TemporaryDirectory(prefix="appsdk-kvm-probe-") as tmp:
        disk = Path(tmp) / "empty.img"
        disk.write_bytes(bytes(1024 * 1024))
        spec = VmSpec(board=board, disk=disk, accel="kvm", emulator=emulator,
                      vars_file=firmware_vars(board, Path(tmp), emulator))
        serial, err = _run_probe(qemu_argv(spec), KVM_PROBE_S)
    ok = kvm_verdict(serial, err)
    marker.parent.mkdir(parents=True, exist_ok=True)
    first_error = next((line for line in err.decode(errors="replace").splitlines()
                        if line.strip()), "")
    marker.write_text(("yes" if ok else "no") + f"\n{first_error}\n")
    return ok


def check_ports(serial_port: int | None, forward: Sequence[tuple[int, int]]) -> None:
    """Refuse host ports that are given twice or already taken, before QEMU starts: its own
    error comes after the firmware has loaded and names no argument."""
    wanted = [(Option("serial_port"), serial_port)] if serial_port else []
    wanted += [(Option("forward"), host) for host, _ in forward]
    seen: set[int] = set()
    for flag, port in wanted:
        if port in seen:
            raise ConfigError(f"host port {port} is used twice", field=flag,
                              hint="give each forward and the serial console its own port")
        seen.add(port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # QEMU listens with SO_REUSEADDR too: a port in TIME_WAIT is fine for it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise ConfigError(f"127.0.0.1:{port} cannot be used: {exc.strerror}",
                                  field=flag, hint="choose another port, or stop the "
                                  "program that listens there") from None


def prepare_disk(image: Path, disk: Path | None, size: int | None) -> Path:
    """A persistent working copy of the image (sparse), grown to `size` if given."""
    if disk is None:
        return image
    if disk.exists() and not disk.is_file():
        raise ConfigError("is not a regular file (a disk image is needed)", file=str(disk),
                          field=Option("disk"), hint="give a file name for the working copy")
    if disk.exists():
        # An existing file is reused as the VM's writable disk and grown: it must be one.
        try:
            disk_table(disk)
        except ConfigError:
            raise ConfigError("exists and is not a disk image (no partition table); "
                              "it would be grown and booted as the VM's disk", field=Option("disk"),
                              file=str(disk), hint="give a new file name for the working "
                              "copy, or a working copy made earlier") from None
    try:
        if not disk.exists():
            disk.parent.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(["cp", "--sparse=always", str(image), str(disk)],
                                  capture_output=True, text=True, check=False)
            if done.returncode:
                disk.unlink(missing_ok=True)  # a partial copy must not pass for a made one
                raise CommandFailed(["cp", "--sparse=always", str(image), str(disk)],
                                    done.returncode, done.stderr)
        if size and disk.stat().st_size < size:
            os.truncate(disk, size)
    except OSError as exc:
        raise PathError.from_oserror(exc, "cannot make the working copy", Option("disk")) from None
    return disk


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="appsdk-vm-"))
