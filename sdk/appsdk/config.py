"""appliance.yaml (schema 1): what an appliance is, validated with file:line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .fields import Reader
from .units import MiB
from .yamlsrc import load

SCHEMA_VERSION = 1
FILENAME = "appliance.yaml"

# An id ends up in file names (<id>_<ver>.efi) and sysupdate patterns, where "_" separates
# id and version; keep it to lowercase words.
ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,30}"
# UAPI version format, minus "_" (field separator) and "+" (boot counting suffix in UKI names).
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.~^-]{0,27}"
PACKAGE_PATTERN = r"[a-z0-9][a-z0-9+.-]+(?:/[a-z0-9-]+)?"
SUITE_PATTERN = r"[a-z][a-z0-9-]*"

TOP_FIELDS = {
    "schema", "id", "name", "version", "board", "base", "overlay", "kernel",
    "partitions", "console", "services", "health", "update", "boot", "firmware",
}


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
class HealthCheck:
    name: str
    command: str | None = None
    unit: str | None = None
    url: str | None = None
    timeout: int = 30


@dataclass(frozen=True)
class Boot:
    deadline: int = 300  # s: a trial boot not confirmed by then is reset
    watchdog: int = 30  # s: systemd's runtime watchdog (capped at the board's maximum); 0: off
    tries: int = 3  # boots a new version gets before systemd-boot falls back


@dataclass(frozen=True)
class Update:
    url: str | None = None
    automatic: bool = False  # run systemd-sysupdate.timer on the device
    key: Path | None = None  # GnuPG home of the signing key (default: per-user config dir)


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
    source: Path | None = None

    def with_version(self, version: str) -> Appliance:
        import dataclasses
        import re

        if not re.fullmatch(VERSION_PATTERN, version):
            raise ConfigError(
                f"version {version!r} is not a valid version",
                field="--version",
                hint="use letters, digits and . ~ ^ - (no '_' or '+')",
            )
        return dataclasses.replace(self, version=version)


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
    mirror = base.text("mirror", BaseOS.mirror)
    if not mirror.startswith(("http://", "https://", "file:/")):
        raise src.error(("base", "mirror"), "must be an http(s):// or file:/ URL")

    overlay: Path | None = None
    if top.has("overlay"):
        overlay = (file.parent / top.text("overlay")).resolve()
        if not overlay.is_dir():
            raise src.error(("overlay",), f"directory {overlay} does not exist")
        _check_overlay(src.error, overlay)

    kernel = top.sub("kernel", {"cmdline", "modules_exclude"})
    parts = top.sub("partitions", {"esp", "usr", "var_min"})
    partitions = Partitions(
        esp=parts.size("esp", Partitions.esp),
        usr=parts.size("usr", Partitions.usr),
        var_min=parts.size("var_min", Partitions.var_min),
    )
    for key, value, minimum in (("esp", partitions.esp, 64), ("usr", partitions.usr, 64),
                                ("var_min", partitions.var_min, 64)):
        if value < minimum * MiB or value % MiB:
            raise src.error(("partitions", key), f"must be a whole number of MiB >= {minimum}M")

    console = top.sub("console", {"autologin"})
    raw_version = top.raw("version")
    if raw_version is not None and not isinstance(raw_version, str):
        # YAML reads 1.10 as 1.1 and 1_0 as 10: an unquoted version silently changes.
        raise src.error(("version",), f"must be a quoted string (YAML read it as {raw_version!r})",
                        hint='write it in quotes, e.g. version: "1.10"')

    return Appliance(
        id=top.text("id", pattern=ID_PATTERN, what="a valid id (lowercase letters, digits, '-')"),
        version=top.text("version", pattern=VERSION_PATTERN,
                        what="a valid version (letters, digits, . ~ ^ -; no '_' or '+')"),
        name=top.text("name", "") or top.text("id"),
        board=top.text("board", "x86-uefi"),
        firmware=top.text("firmware", pattern=r"[a-z0-9]+(\+[a-z0-9]+)?",
                          what="a firmware chain, e.g. rpi+uboot")
        if top.has("firmware") else None,
        base=BaseOS(
            suite=base.text("suite", BaseOS.suite, pattern=SUITE_PATTERN, what="a Debian suite"),
            mirror=mirror,
            components=base.texts("components") or BaseOS.components,
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
        update=_update(top),
        boot=_boot(top),
        source=file.resolve(),
    )


def _check_overlay(error: object, overlay: Path) -> None:
    # / is a tmpfs and /var is per device: only /usr and /etc (kept as factory /etc) are imaged.
    for entry in sorted(overlay.iterdir()):
        if entry.name not in ("usr", "etc"):
            raise ConfigError(
                f"overlay entry {entry.name!r} would be lost: only usr/ and etc/ are part of "
                "the image (/ is a tmpfs, /var is per device)",
                file=str(entry),
                hint="move it under usr/ (e.g. usr/lib/<id>/) or etc/",
            )


def _health(top: Reader) -> tuple[HealthCheck, ...]:
    raw = top.raw("health")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise top.src.error(("health",), "must be a list of checks")
    checks = []
    for index, _ in enumerate(raw):
        item = Reader(top.src, ("health", index), raw[index],
                      {"name", "command", "unit", "url", "timeout"})
        kinds = [k for k in ("command", "unit", "url") if item.has(k)]
        if len(kinds) != 1:
            raise top.src.error(("health", index), "needs exactly one of command, unit, url")
        checks.append(HealthCheck(
            name=item.text("name", f"check{index}", pattern=r"[a-z0-9][a-z0-9-]*",
                          what="a valid name (lowercase letters, digits, '-')"),
            command=item.text("command") if item.has("command") else None,
            unit=item.text("unit") if item.has("unit") else None,
            url=item.text("url", pattern=r"https?://\S+", what="an http(s) URL")
            if item.has("url") else None,
            timeout=item.integer("timeout", 30, minimum=1),
        ))
    return tuple(checks)


def _boot(top: Reader) -> Boot:
    boot = top.sub("boot", {"deadline", "watchdog", "tries"})
    return Boot(deadline=boot.integer("deadline", Boot.deadline, minimum=30),
                watchdog=boot.integer("watchdog", Boot.watchdog, minimum=0),
                # A bad update costs up to `tries` boots (each up to the deadline) before
                # the fallback: more than a few only delays recovery.
                tries=boot.integer("tries", Boot.tries, minimum=1, maximum=9))


def _update(top: Reader) -> Update:
    update = top.sub("update", {"url", "automatic", "key"})
    key = None
    if update.has("key"):
        key = (top.src.path.parent / Path(update.text("key")).expanduser()).resolve()
    return Update(
        url=update.text("url", pattern=r"https?://\S+", what="an http(s) URL")
        if update.has("url") else None,
        automatic=update.flag("automatic", False),
        key=key,
    )
