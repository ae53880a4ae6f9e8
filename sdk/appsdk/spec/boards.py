"""Board profiles: data files in boards/ (shipped in the package too) and in a user's own
directories (datadirs.py has the lookup order), validated on load. Code asks a board for
capabilities (firmware chain, watchdog, emulator), never for its name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appsdk.core.datadirs import BOARDS, search_path, user_dir, yaml_files
from appsdk.core.errors import ConfigError
from appsdk.spec.fields import BOARD_PATTERN, board_name
from appsdk.spec.reader import Reader
from appsdk.spec.yamlsrc import load

# The board when none is named: appliance.yaml, `appsdk init`, `appsdk run` of a bare image,
# the KVM check of `appsdk doctor`.
DEFAULT_BOARD = "x86-uefi"

FIRMWARE_CHAINS = ("uefi", "rpi+uboot", "rpi+edk2")
# GPT/UAPI architecture names (repart's usr-<arch>) mapped to Debian's and EFI's names.
ARCHES = {"x86-64": ("amd64", "x64"), "arm64": ("arm64", "aa64")}


@dataclass(frozen=True)
class Watchdog:
    device: str  # kernel driver / device name, for docs and checks
    max_timeout_s: int


class HostFile(str):
    """Firmware named by its path on the host (an installed package's file)."""

    @property
    def path(self) -> Path:
        return Path(self)


class PinnedFile(str):
    """Firmware named as component:file of a pinned manifest (fetched and verified)."""

    @property
    def component(self) -> str:
        return self.partition(":")[0]

    @property
    def file(self) -> str:
        return self.partition(":")[2]


FirmwareRef = HostFile | PinnedFile


def firmware_ref(text: str) -> FirmwareRef:
    """The one place a firmware reference's kind is decided: a host path is absolute."""
    return HostFile(text) if text.startswith("/") else PinnedFile(text)


@dataclass(frozen=True)
class Emulator:
    """How QEMU stands in for the board. Firmware is named by host path (first existing
    wins) or as component:file of a pinned firmware manifest."""
    name: str
    qemu: str
    machine: str
    cpu: str
    memory_mib: int
    firmware_code: tuple[FirmwareRef, ...]  # UEFI code flash (with firmware_vars), or
    firmware_vars: tuple[FirmwareRef, ...]
    bios: FirmwareRef | None  # firmware given with -bios (U-Boot keeps its variables on the ESP)
    watchdog: str | None
    extra_args: tuple[str, ...] = ()
    console: str | None = None  # the tty Linux sees the emulated UART as (ttyS0, ttyAMA0)
    tpm: str | None = None  # QEMU's TPM 2.0 device model (tpm-crb, tpm-tis-device), swtpm behind


def pick_emulator(board: str, emulators: tuple[Emulator, ...], name: str | None) -> Emulator:
    """The emulator profile `name` of a board (None: its first, the default)."""
    if not emulators:
        raise ConfigError(f"board {board} has no emulator profile", field="emulators",
                          hint="boot it on real hardware, or use an emulated board")
    for em in emulators:
        if name in (None, em.name):
            return em
    raise ConfigError(f"board {board} has no emulator {name!r}",
                      hint="choose one of " + ", ".join(e.name for e in emulators))


class EmulatedBoard(Protocol):
    """What running a board in QEMU needs of it: a Board read from its profile, or the
    board as a build recorded it (contract.record.RecordedBoard)."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> Path: ...
    @property
    def debian_arch(self) -> str: ...
    def emulator_named(self, name: str | None) -> Emulator: ...


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str
    firmware_chain: str
    firmware_options: tuple[str, ...]
    kernel_package: str
    kernel_backports: bool  # take the kernel from <suite>-backports
    initrd_modules: tuple[str, ...]
    console: str
    watchdog: Watchdog | None
    # The kernel drivers of the board's TPM 2.0 (the initrd unseals /var with it); none: the
    # board has no TPM (var.encrypt: tpm2 then refuses or stays plain, as var.without_tpm says)
    tpm_modules: tuple[str, ...]
    # Per firmware chain ("common" applies to all): ESP path -> "component:file" | "dtb:path"
    esp_files: dict[str, tuple[tuple[str, str], ...]]
    config_txt: dict[str, tuple[str, ...]]
    disk_devices: tuple[str, ...]
    emulators: tuple[Emulator, ...]  # the first is the default
    complete: bool
    source: Path

    @property
    def emulator(self) -> Emulator | None:
        return self.emulators[0] if self.emulators else None

    def emulator_named(self, name: str | None) -> Emulator:
        return pick_emulator(self.name, self.emulators, name)

    def check_chain(self, chain: str, file: str | None = None) -> str:
        """`chain` if this board offers it, else a ConfigError naming the choices."""
        if chain not in self.firmware_options:
            raise ConfigError(f"board {self.name} has no firmware chain {chain!r}", file=file,
                              field="firmware" if file else None,
                              hint="choose one of " + ", ".join(self.firmware_options))
        return chain

    @property
    def debian_arch(self) -> str:
        return ARCHES[self.arch][0]

    @property
    def efi_arch(self) -> str:
        return ARCHES[self.arch][1]


def board_files(directory: Path | None = None) -> dict[str, Path]:
    """Profile name -> file: those in `directory` alone, else the first of each name along
    the lookup path (a user's profile shadows a shipped one of the same name)."""
    return yaml_files([directory] if directory else search_path(BOARDS))


def list_boards(directory: Path | None = None) -> list[Board]:
    """Every profile, by name; each Board's `source` says where it came from."""
    return [load_board_file(p) for p in board_files(directory).values()]


def load_board(name: str, directory: Path | None = None, field: str = "board") -> Board:
    """The profile NAME.yaml found first along the lookup path. A name is a name, never a
    path (errors name `field`, e.g. Option("board") for an argument)."""
    name = board_name(name, field)
    files = board_files(directory)
    if name not in files:
        own = user_dir(BOARDS) or "~/.config/appsdk/boards"
        raise ConfigError(f"unknown board {name!r}", field=field,
                          hint=f"known boards: {', '.join(files)}; a profile of your own goes "
                          f"in {own} or a directory on APPSDK_BOARDS_PATH")
    return load_board_file(files[name])


def _chains(top: Reader, key: str, options: tuple[str, ...]) -> Reader:
    return top.sub(key, {"common", *options})


def _per_chain_files(top: Reader,
                     options: tuple[str, ...]) -> dict[str, tuple[tuple[str, str], ...]]:
    out = {}
    chains = _chains(top, "esp_files", options)
    for chain in chains.data:
        files = chains.sub(chain, None)
        pairs = []
        for dest in sorted(files.data):
            source = files.text(dest, pattern=r"(dtb|[a-z0-9][a-z0-9.+-]*):[\w./+-]+",
                                what="component:file or dtb:path")
            pairs.append((str(dest), source))
        out[str(chain)] = tuple(pairs)
    return out


def _per_chain_lines(top: Reader, options: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    chains = _chains(top, "config_txt", options)
    return {str(chain): chains.texts(chain, pattern=r"[a-z_0-9]+=\S.*", what="key=value")
            for chain in chains.data}


def load_board_file(path: Path) -> Board:
    src = load(path)
    top = Reader(src, (), src.data, {
        "name", "description", "arch", "firmware_chain", "firmware_options", "kernel_package",
        "kernel_backports",
        "initrd_modules", "console", "watchdog", "esp_files", "config_txt", "disk_devices",
        "emulators", "complete", "tpm_modules",
    })
    name = top.text("name", pattern=BOARD_PATTERN, what="a board name")
    if name != path.stem:
        raise src.error(("name",), f"must match the file name ({path.stem!r})")
    arch = top.text("arch")
    if arch not in ARCHES:
        raise src.error(("arch",), f"{arch!r} is not one of {', '.join(ARCHES)}")
    chain = top.text("firmware_chain")
    if chain not in FIRMWARE_CHAINS:
        raise src.error(("firmware_chain",),
                        f"{chain!r} is not one of {', '.join(FIRMWARE_CHAINS)}")
    options = top.texts("firmware_options") or (chain,)
    for index, option in enumerate(options):
        if option not in FIRMWARE_CHAINS:
            raise src.error(("firmware_options", index), f"{option!r} is not a firmware chain")

    watchdog = None
    if top.has("watchdog"):
        wd = top.sub("watchdog", {"device", "max_timeout_s"})
        watchdog = Watchdog(wd.text("device"), wd.integer("max_timeout_s", minimum=1))

    emulators = []
    if top.has("emulators"):
        all_em = top.sub("emulators", None)
        for em_name in all_em.data:
            em = all_em.sub(em_name, {"qemu", "machine", "cpu", "memory_mib", "firmware_code",
                                      "firmware_vars", "bios", "watchdog", "extra_args",
                                      "console", "tpm"})
            bios = firmware_ref(em.text("bios")) if em.has("bios") else None
            if bool(bios) == em.has("firmware_code"):
                raise src.error(("emulators", em_name),
                                "needs exactly one of firmware_code (UEFI flash) or bios")
            emulators.append(Emulator(
                name=str(em_name),
                qemu=em.text("qemu"),
                machine=em.text("machine"),
                cpu=em.text("cpu", "max"),
                memory_mib=em.integer("memory_mib", 2048, minimum=256),
                firmware_code=tuple(map(firmware_ref, em.texts("firmware_code"))),
                firmware_vars=tuple(map(firmware_ref, em.texts("firmware_vars"))),
                bios=bios,
                watchdog=em.text("watchdog") if em.has("watchdog") else None,
                extra_args=em.texts("extra_args"),
                console=em.text("console") if em.has("console") else None,
                tpm=em.text("tpm") if em.has("tpm") else None,
            ))

    return Board(
        name=name,
        description=top.text("description", ""),
        arch=arch,
        firmware_chain=chain,
        firmware_options=options,
        kernel_package=top.text("kernel_package"),
        kernel_backports=top.flag("kernel_backports", False),
        initrd_modules=top.texts("initrd_modules"),
        console=top.text("console"),
        watchdog=watchdog,
        tpm_modules=top.texts("tpm_modules", pattern=r"[a-z0-9_-]+", what="a kernel module"),
        esp_files=_per_chain_files(top, options),
        config_txt=_per_chain_lines(top, options),
        disk_devices=top.texts("disk_devices"),
        emulators=tuple(emulators),
        complete=top.flag("complete", True),
        source=path,
    )
