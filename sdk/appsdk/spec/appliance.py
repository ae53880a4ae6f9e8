"""appliance.yaml (schema 1): what an appliance is, validated with file:line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appsdk.core.errors import ConfigError, Option
from appsdk.core.units import MiB
from appsdk.spec import fields
from appsdk.spec.boards import DEFAULT_BOARD
from appsdk.spec.fields import SIZE_LIMITS
from appsdk.spec.overlay import check_overlay
from appsdk.spec.reader import Reader
from appsdk.spec.yamlsrc import load

SCHEMA_VERSION = 1
FILENAME = "appliance.yaml"

# The id and version rules live with their validators (fields); scaffold and buildinfo
# read them from here.
ID_PATTERN = fields.ID_PATTERN
VERSION_PATTERN = fields.VERSION_PATTERN
PACKAGE_PATTERN = r"[a-z0-9][a-z0-9+.-]+(?:/[a-z0-9-]+)?"
SUITE_PATTERN = r"[a-z][a-z0-9-]*"

TOP_FIELDS = {
    "schema", "id", "name", "version", "board", "base", "overlay", "kernel",
    "partitions", "console", "services", "health", "update", "boot", "firmware",
    "secure_boot", "var",
}
# loader.conf(5) secure-boot-enroll: what systemd-boot does with the ESP's key set on a
# machine in setup mode (docs/secure-boot.md: if-safe enrolls in VMs only, force anywhere).
ENROLL_MODES = ("if-safe", "manual", "force", "off")
# var.encrypt: "tpm2" seals /var to the device's TPM and the team's PCR key (docs/tpm.md).
VAR_ENCRYPTIONS = ("none", "tpm2")
# var.without_tpm: what a build for a board whose profile names no TPM does.
WITHOUT_TPM = ("refuse", "plain")


@dataclass(frozen=True)
class BaseOS:
    suite: str = "trixie"
    mirror: str = "http://deb.debian.org/debian"
    components: tuple[str, ...] = ("main",)
    packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class Partitions:
    esp: int = 256 * MiB
    usr: int = 1024 * MiB
    var_min: int = 2048 * MiB


@dataclass(frozen=True)
class Console:
    autologin: bool = False  # root autologin on the serial console: development images only


@dataclass(frozen=True)
class CommandProbe:
    """A shell command on the device; exit status 0 is healthy."""
    command: str


@dataclass(frozen=True)
class UnitProbe:
    """A systemd unit that must be active."""
    unit: str


@dataclass(frozen=True)
class UrlProbe:
    """A plain-HTTP URL on the device that must answer 2xx."""
    url: str


Probe = CommandProbe | UnitProbe | UrlProbe


@dataclass(frozen=True, init=False)
class HealthCheck:
    name: str
    probe: Probe
    timeout: int = 30

    def __init__(self, name: str, probe: Probe | None = None, *, command: str | None = None,
                 unit: str | None = None, url: str | None = None, timeout: int = 30) -> None:
        """A probe, or exactly one of command, unit, url (the keys of appliance.yaml)."""
        given = [p for p in (probe, command and CommandProbe(command), unit and UnitProbe(unit),
                             url and UrlProbe(url)) if p]
        if len(given) != 1:
            raise ConfigError(f"health check {name}: needs exactly one of command, unit, url")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "probe", given[0])
        object.__setattr__(self, "timeout", timeout)

    @property
    def command(self) -> str | None:
        return self.probe.command if isinstance(self.probe, CommandProbe) else None

    @property
    def unit(self) -> str | None:
        return self.probe.unit if isinstance(self.probe, UnitProbe) else None

    @property
    def url(self) -> str | None:
        return self.probe.url if isinstance(self.probe, UrlProbe) else None


@dataclass(frozen=True)
class Boot:
    deadline: int = 300  # s: a trial boot not confirmed by then is reset
    watchdog: int = 30  # s: systemd's runtime watchdog (capped at the board's maximum); 0: off
    tries: int = 3  # boots a new version gets before systemd-boot falls back


@dataclass(frozen=True)
class Compression:
    """update.compression: how the update files are compressed. systemd-pull unpacks either
    by its magic; the suffix is what the device's sysupdate.d patterns look for."""

    name: str
    suffix: str
    argv: tuple[str, ...]  # the compressor, writing the file given after these to stdout
    unpack: tuple[str, ...]  # its decompressor, the same way


# What systemd-pull 257 can unpack (no zstd in Debian's). Measured on hello 1.0 (x86-uefi:
# UKI, 143 MB lz4hc erofs /usr, verity) on a 2-core host: xz -6 makes 132.7 MB in 62 s,
# unpacked in 5.1 s; gzip -6 144.8 MB in 10 s, unpacked in 2.0 s. Both are reproducible
# (xz: -T0 and a fixed block size, whatever the core count; gzip: -n drops the mtime).
COMPRESSIONS = {
    "xz": Compression("xz", ".xz", ("xz", "-6", "-T0", "--block-size=16MiB", "-c"),
                      ("xz", "-dc")),
    "gzip": Compression("gzip", ".gz", ("gzip", "-6", "-n", "-c"), ("gzip", "-dc")),
}
DEFAULT_COMPRESSION = "xz"  # the smallest download; also what builds before the field used


@dataclass(frozen=True)
class Update:
    url: str | None = None
    automatic: bool = False  # run systemd-sysupdate.timer on the device
    key: Path | None = None  # GnuPG home of the signing key (default: per-user config dir)
    compression: str = DEFAULT_COMPRESSION  # of the update files: one of COMPRESSIONS


@dataclass(frozen=True)
class SecureBoot:
    """Sign every EFI binary with the appliance's db key and carry the key set for
    enrollment."""
    keys: Path | None = None  # key set directory (default: <update key dir>/secure-boot)
    enroll: str = "if-safe"  # one of ENROLL_MODES


@dataclass(frozen=True)
class Var:
    """The persistent /var made on first boot."""
    encrypt: str = "none"  # one of VAR_ENCRYPTIONS
    without_tpm: str = "refuse"  # one of WITHOUT_TPM: a TPM-less board refuses, or gets plain

    @property
    def sealed(self) -> bool:
        """Encrypted, its key sealed to the TPM (every consumer asks only this)."""
        return self.encrypt == "tpm2"


@dataclass(frozen=True)
class Appliance:
    id: str
    version: str
    name: str
    board: str
    base: BaseOS
    overlay: Path | None
    cmdline: tuple[str, ...]
    modules_exclude: tuple[str, ...]
    partitions: Partitions
    console: Console
    services: tuple[str, ...] = ()
    health: tuple[HealthCheck, ...] = ()
    update: Update = field(default_factory=Update)
    boot: Boot = field(default_factory=Boot)
    firmware: str | None = None  # the board's firmware chain; None: the board's default
    secure_boot: SecureBoot | None = None  # None: EFI binaries are not signed
    var: Var = field(default_factory=Var)
    source: Path | None = None

    def with_version(self, version: str, flag: str = Option("version")) -> Appliance:
        """This appliance with another version (an override; errors name `flag`)."""
        import dataclasses

        return dataclasses.replace(self, version=fields.version(version, flag))


def find_config(path: Path) -> Path:
    """Accept the appliance directory or the file itself."""
    return path / FILENAME if path.is_dir() else path


def load_appliance(path: Path) -> Appliance:
    file = find_config(path)
    src = load(file)
    top = Reader(src, (), src.data, TOP_FIELDS)
    schema = top.integer("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise src.error(("schema",), f"schema {schema} is not supported (this appsdk reads 1)")

    base = top.sub("base", {"distribution", "suite", "mirror", "components", "packages"})
    distribution = base.text("distribution", "debian")
    if distribution != "debian":
        raise src.error(("base", "distribution"), f"{distribution!r} is not supported (debian)")
    mirror = base.check("mirror", fields.mirror_url, BaseOS.mirror)

    overlay: Path | None = None
    if top.has("overlay"):
        try:
            overlay = (file.parent / top.text("overlay")).resolve()
            found = overlay.is_dir()
        except (RuntimeError, OSError) as exc:  # a name too long, a symlink loop
            raise src.error(("overlay",), f"cannot be resolved: {exc}") from None
        if not found:
            raise src.error(("overlay",), f"directory {overlay} does not exist")
        check_overlay(overlay)

    kernel = top.sub("kernel", {"cmdline", "modules_exclude"})
    parts = top.sub("partitions", {"esp", "usr", "var_min"})
    partitions = Partitions(
        esp=parts.size("esp", Partitions.esp, SIZE_LIMITS["esp"]),
        usr=parts.size("usr", Partitions.usr, SIZE_LIMITS["usr"]),
        var_min=parts.size("var_min", Partitions.var_min, SIZE_LIMITS["var_min"]),
    )

    console = top.sub("console", {"autologin"})
    # yamlsrc keeps an unquoted 1.10 as the text "1.10" (YAML 1.1 would read 1.1).
    app_id = top.check("id", fields.app_id)
    return Appliance(
        id=app_id,
        version=top.check("version", fields.version),
        name=top.check("name", fields.display_name, app_id),
        board=top.check("board", fields.board_name, DEFAULT_BOARD),
        firmware=top.text("firmware", pattern=r"[a-z0-9]+(\+[a-z0-9]+)?",
                          what="a firmware chain, e.g. rpi+uboot")
        if top.has("firmware") else None,
        base=BaseOS(
            suite=base.text("suite", BaseOS.suite, pattern=SUITE_PATTERN, what="a Debian suite"),
            mirror=mirror,
            components=base.texts("components", pattern=r"[a-z0-9][a-z0-9-]*",
                                  what="an archive component (main, contrib, ...)")
            or BaseOS.components,
            packages=base.texts("packages", pattern=PACKAGE_PATTERN, what="a package name"),
        ),
        overlay=overlay,
        cmdline=tuple(kernel.text("cmdline", "").split()),
        modules_exclude=kernel.texts("modules_exclude", pattern=r"[a-z0-9_-]+(/[a-z0-9_-]+)*",
                                     what="a path below the kernel's module tree"),
        partitions=partitions,
        console=Console(autologin=console.flag("autologin", False)),
        services=top.texts("services", pattern=r"[A-Za-z0-9@_.:-]+\.(service|socket|timer|path)",
                              what="a unit name (name.service, .socket, .timer, .path)"),
        health=_health(top),
        update=_update(top, overlay),
        boot=_boot(top),
        secure_boot=_secure_boot(top, overlay),
        var=_var(top),
        source=file.resolve(),
    )


def _health(top: Reader) -> tuple[HealthCheck, ...]:
    raw = top.raw("health")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise top.src.error(("health",), "must be a list of checks")
    checks: list[HealthCheck] = []
    for index, _ in enumerate(raw):
        item = Reader(top.src, ("health", index), raw[index],
                      {"name", "command", "unit", "url", "timeout"})
        kinds = [k for k in ("command", "unit", "url") if item.has(k)]
        if len(kinds) != 1:
            raise top.src.error(("health", index), "needs exactly one of command, unit, url")
        name = item.check("name", fields.check_name, f"check{index}")
        # The name makes the unit appsdk-health-NAME.service: two checks, one unit.
        for other, check in enumerate(checks):
            if check.name == name:
                raise top.src.error((*item.path, "name"), f"{name!r} is also the name of "
                                    f"health[{other}]", hint="give each check its own name")
        probe: Probe
        if item.has("command"):
            probe = CommandProbe(item.check("command", fields.health_command))
        elif item.has("unit"):
            probe = UnitProbe(item.check("unit", fields.unit_name))
        else:
            probe = UrlProbe(item.check("url", fields.health_url))
        checks.append(HealthCheck(name, probe, timeout=item.integer("timeout", 30, minimum=1)))
    return tuple(checks)


def _boot(top: Reader) -> Boot:
    boot = top.sub("boot", {"deadline", "watchdog", "tries"})
    return Boot(deadline=boot.integer("deadline", Boot.deadline, minimum=30),
                watchdog=boot.integer("watchdog", Boot.watchdog, minimum=0),
                # A bad update costs up to `tries` boots (each up to the deadline) before
                # the fallback: more than a few only delays recovery.
                tries=boot.integer("tries", Boot.tries, minimum=1, maximum=9))


def _secure_boot(top: Reader, overlay: Path | None) -> SecureBoot | None:
    raw = top.raw("secure_boot")
    if raw is None or raw is False:
        return None
    if raw is True:
        return SecureBoot()
    if not isinstance(raw, dict):
        raise top.src.error(("secure_boot",), f"must be true, false or a mapping (keys, "
                            f"enroll), got {raw!r}")
    sb = top.sub("secure_boot", {"keys", "enroll"})
    keys = None
    if sb.has("keys"):
        keys = sb.check("keys", lambda value, name: fields.key_dir(
            value, name, base=top.src.path.parent, overlay=overlay))
    return SecureBoot(keys=keys, enroll=sb.text(
        "enroll", SecureBoot.enroll, pattern="|".join(ENROLL_MODES),
        what="a systemd-boot enrollment mode (" + ", ".join(ENROLL_MODES) + ")"))


def _var(top: Reader) -> Var:
    var = top.sub("var", {"encrypt", "without_tpm"})
    return Var(
        encrypt=var.text("encrypt", Var.encrypt, pattern="|".join(VAR_ENCRYPTIONS),
                         what="an encryption of /var (" + ", ".join(VAR_ENCRYPTIONS) + ")"),
        without_tpm=var.text("without_tpm", Var.without_tpm, pattern="|".join(WITHOUT_TPM),
                             what="what a board without a TPM gets (" + ", ".join(WITHOUT_TPM)
                             + ")"))


def _update(top: Reader, overlay: Path | None) -> Update:
    update = top.sub("update", {"url", "automatic", "key", "compression"})
    key = None
    if update.has("key"):
        key = update.check("key", lambda value, name: fields.key_dir(
            value, name, base=top.src.path.parent, overlay=overlay))
    return Update(
        url=update.check("url", fields.update_url) if update.has("url") else None,
        automatic=update.flag("automatic", False),
        key=key,
        # Devices look for their own version's suffix: every version of an appliance keeps
        # the one it started with (`appsdk release` refuses a mix).
        compression=update.text("compression", DEFAULT_COMPRESSION,
                                pattern="|".join(COMPRESSIONS),
                                what="a compression (" + ", ".join(COMPRESSIONS) + ")"),
    )
