"""Provisioning over a serial console: per-device identity into /var, files pushed
binary-safe, status read back, optionally an update installed from pushed files.

A plan (YAML) holds what every device gets plus a list of devices with their own values;
`{serial}`, `{hostname}` and `{vars.NAME}` are filled in per device (docs/provisioning.md)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .console import SerialConsole, Shell
from .errors import AppsdkError, ConfigError
from .fields import Reader
from .filepush import PushResult, push_bytes, run_checked
from .progress import Event, NullReporter, Reporter
from .stages.update import SUMS

COMMON = {"login", "hostname", "update_url", "authorized_keys", "credentials", "files"}
IDENTITY = "/var/lib/appsdk/identity"
UPDATES = "/var/lib/appsdk/updates"
HOSTNAME = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
NAME = r"[A-Za-z0-9_.-]+"


@dataclass(frozen=True)
class FileSpec:
    src: Path
    dest: str
    mode: int = 0o644


@dataclass(frozen=True)
class DevicePlan:
    """Everything one device gets; paths are resolved, templates filled in."""

    serial: str = ""
    hostname: str = ""
    update_url: str = ""
    authorized_keys: tuple[Path, ...] = ()
    credentials: tuple[tuple[str, Path], ...] = ()
    files: tuple[FileSpec, ...] = ()
    user: str = "root"
    password: str | None = None


@dataclass(frozen=True)
class Plan:
    """A checked plan. `device(serial)` gives one device's resolved DevicePlan: the
    plan-wide values, then the device's own entry, templates filled with its values."""

    path: Path
    src: Any
    top: Reader
    entries: dict[str, Reader]

    @property
    def serials(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def device(self, serial: str | None = None) -> DevicePlan:
        if serial is None:
            if len(self.entries) > 1:
                raise ConfigError(f"the plan lists {len(self.entries)} devices; say which "
                                  "one with --device SERIAL", file=str(self.path))
            serial = next(iter(self.entries), "")
        elif self.entries and serial not in self.entries:
            raise ConfigError(f"no device with serial {serial!r} in the plan",
                              file=str(self.path), hint="known: " + ", ".join(self.entries))
        entry = self.entries.get(serial)
        values: dict[str, Any] = {"serial": serial,
                                  "vars": dict(entry.raw("vars") or {}) if entry else {}}
        plan = _device(self.src, self.top, DevicePlan(serial=serial), self.path.parent, values)
        if entry is not None:
            values["hostname"] = plan.hostname
            plan = _device(self.src, entry, plan, self.path.parent, values)
        return plan


def _fill(template: str, values: dict[str, Any], src: Any, where: tuple[Any, ...]) -> str:
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        value: Any = values
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise src.error(where, f"unknown variable {{{key}}}",
                                hint="use {serial}, {hostname} or {vars.NAME}")
            value = value[part]
        return str(value)

    return re.sub(r"\{([A-Za-z0-9_.-]+)\}", one, template)


def _device(src: Any, r: Reader, base: DevicePlan, root: Path,
            values: dict[str, Any]) -> DevicePlan:
    def path_of(text: str, where: tuple[Any, ...]) -> Path:
        p = (root / text).resolve()
        if not p.is_file():
            raise src.error(where, f"file {text!r} not found (relative to {root})")
        return p

    files = list(base.files)
    raw_files = r.raw("files") or []
    if not isinstance(raw_files, list):
        raise src.error((*r.path, "files"), "must be a list of {src, dest, mode}")
    for i, _ in enumerate(raw_files):
        fr = Reader(src, (*r.path, "files", i), raw_files[i], {"src", "dest", "mode"})
        dest = _fill(fr.text("dest"), values, src, (*fr.path, "dest"))
        if not dest.startswith("/"):
            raise src.error((*fr.path, "dest"), "must be an absolute path on the device")
        mode = int(fr.text("mode", "0644", pattern=r"0?[0-7]{3,4}", what="an octal mode"), 8)
        files.append(FileSpec(path_of(fr.text("src"), (*fr.path, "src")), dest, mode))
    keys = base.authorized_keys + tuple(
        path_of(k, (*r.path, "authorized_keys", i))
        for i, k in enumerate(r.texts("authorized_keys")))
    creds = dict(base.credentials)
    cr = r.sub("credentials", set(r.raw("credentials") or {}))
    for name in cr.data:
        if not re.fullmatch(NAME, str(name)):
            raise src.error((*cr.path, name), "credential names are letters, digits, _ . -")
        creds[str(name)] = path_of(cr.text(name), (*cr.path, name))
    hostname = base.hostname
    if r.has("hostname"):
        hostname = _fill(r.text("hostname"), values, src, (*r.path, "hostname"))
    if hostname and not re.fullmatch(HOSTNAME, hostname):
        raise src.error((*r.path, "hostname"), f"{hostname!r} is not a valid hostname")
    url = base.update_url
    if r.has("update_url"):
        url = _fill(r.text("update_url"), values, src, (*r.path, "update_url"))
        if not re.match(r"https?://", url):
            raise src.error((*r.path, "update_url"), "must be an http:// or https:// URL")
    login = r.sub("login", {"user", "password"})
    return replace(base, hostname=hostname, update_url=url, authorized_keys=keys,
                   credentials=tuple(sorted(creds.items())), files=tuple(files),
                   user=login.text("user", base.user),
                   password=login.text("password") if login.has("password") else base.password)


def load_plan(path: Path) -> Plan:
    """Read and check a plan: every device it lists is resolved now, so a missing file or
    an unknown template variable is reported before anything is provisioned."""
    from .yamlsrc import load

    src = load(path)
    top = Reader(src, (), src.data, {"plan", *COMMON, "devices"})
    if top.integer("plan", 1, minimum=1) != 1:
        raise src.error(("plan",), "unsupported plan version (this appsdk reads 1)")
    raw = top.raw("devices") or []
    if not isinstance(raw, list):
        raise src.error(("devices",), "must be a list")
    entries: dict[str, Reader] = {}
    for i, item in enumerate(raw):
        entry = Reader(src, ("devices", i), item, {"serial", "vars", *COMMON})
        serial = entry.text("serial", pattern=NAME,
                            what="a serial number (letters, digits, _ . -)")
        if serial in entries:
            raise src.error(("devices", i, "serial"), f"{serial!r} is listed twice")
        entry.sub("vars", set(entry.raw("vars") or {}))  # must be a mapping
        entries[serial] = entry
    plan = Plan(path, src, top, entries)
    for serial in entries or [""]:
        plan.device(serial or None)
    return plan


@dataclass
class ProvisionReport:
    port: str
    serial: str
    hostname: str
    ok: bool = False
    seconds: float = 0.0
    files: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    update: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"event": "device", "port": self.port, "serial": self.serial,
                "hostname": self.hostname, "result": "ok" if self.ok else "failed",
                "seconds": round(self.seconds, 1), "files": self.files,
                "status": self.status, "update": self.update, "error": self.error}


def _record(result: PushResult) -> dict[str, Any]:
    return {"dest": result.dest, "bytes": result.size, "sha256": result.sha256,
            "seconds": round(result.seconds, 2), "retries": result.retries}


def identity_files(plan: DevicePlan) -> dict[str, tuple[bytes, int]]:
    """{device path: (content, mode)} for the identity kept in /var."""
    out: dict[str, tuple[bytes, int]] = {}
    if plan.hostname:
        out[f"{IDENTITY}/hostname"] = (plan.hostname.encode() + b"\n", 0o644)
    if plan.serial:
        out[f"{IDENTITY}/serial"] = (plan.serial.encode() + b"\n", 0o644)
    if plan.update_url:
        out[f"{IDENTITY}/update-url"] = (plan.update_url.encode() + b"\n", 0o644)
    if plan.authorized_keys:
        keys = b"".join(k.read_bytes().rstrip(b"\n") + b"\n" for k in plan.authorized_keys)
        out[f"{IDENTITY}/authorized_keys"] = (keys, 0o600)
    for name, path in plan.credentials:
        out[f"{IDENTITY}/credentials/{name}"] = (path.read_bytes(), 0o600)
    return out


def read_status(shell: Shell) -> dict[str, Any]:
    out = run_checked(shell, "appsdk-status --json")
    try:
        status: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AppsdkError(
            f"appsdk-status printed something that is not JSON: {out[-200:]}") from None
    return status


def update_files(update_dir: Path) -> list[Path]:
    """SHA256SUMS, its signature and every file it lists, from a release or build dir."""
    sums, signature = update_dir / SUMS, update_dir / f"{SUMS}.gpg"
    if not sums.is_file() or not signature.is_file():
        raise ConfigError("not an update directory: needs SHA256SUMS and SHA256SUMS.gpg",
                          file=str(update_dir), hint="use a build or `appsdk release` output")
    names = [line.split()[-1].lstrip("*") for line in sums.read_text().splitlines() if line]
    return [update_dir / n for n in names] + [sums, signature]


def install_local_update(shell: Shell, directory: str = UPDATES) -> str:
    """Install the update whose SHA256SUMS, signature and artifacts are in `directory` on
    the device: the image's own transfer definitions, with file://DIRECTORY/ as source.
    systemd-pull reads file:// URLs like http:// ones, so SHA256SUMS.gpg is verified
    against the image's keyring exactly as for a download. Returns sysupdate's output."""
    defs = "/run/appsdk-local-update.d"
    command = (
        f"rm -rf {defs} && mkdir -p {defs} && "
        "for t in /usr/lib/sysupdate.d/*.transfer; do "
        f"sed 's|^Path=https\\?://.*|Path=file://{directory.rstrip('/')}/|' \"$t\" "
        f"> {defs}/${{t##*/}}; done && "
        f"/usr/lib/systemd/systemd-sysupdate --no-pager --definitions={defs} update 2>&1")
    return run_checked(shell, command, timeout=900, attempts=1)


def provision_serial(port: str, plan: DevicePlan, *, baud: int = 115200,
                     update_dir: Path | None = None, reporter: Reporter | None = None,
                     log: Path | None = None, shell: Shell | None = None,
                     line_rate: float | None = None) -> ProvisionReport:
    """Provision one device on `port` (anything pyserial opens). Never raises for a device
    problem: the report says what failed (ok=False, error=...)."""
    reporter = reporter or NullReporter()
    report = ProvisionReport(port, plan.serial, plan.hostname)
    start = time.monotonic()
    rate = line_rate or baud / 10
    console = None
    try:
        if shell is None:
            console = SerialConsole(port, baud=baud)
            shell = Shell(console, log=log)
        reporter.emit(Event("stage-start", "attach", f"waiting for a shell on {port}"))
        shell.attach(plan.user, plan.password)
        pushes: list[tuple[str, bytes, int]] = [
            (dest, data, mode) for dest, (data, mode) in identity_files(plan).items()]
        pushes += [(f.dest, f.src.read_bytes(), f.mode) for f in plan.files]
        if update_dir is not None:
            pushes += [(f"{UPDATES}/{p.name}", p.read_bytes(), 0o644)
                       for p in update_files(update_dir)]
        total = sum(len(d) for _, d, _ in pushes)
        done = 0
        for dest, data, mode in pushes:
            reporter.emit(Event("progress", "push", f"push {dest} ({len(data)} bytes)",
                                data={"done": done, "total": total, "file": dest}))
            report.files.append(_record(push_bytes(shell, data, dest, mode, line_rate=rate)))
            done += len(data)
        run_checked(shell, "/usr/lib/appsdk/appsdk-identity")
        if update_dir is not None:
            reporter.emit(Event("stage-start", "update", "systemd-sysupdate from pushed files"))
            report.update = install_local_update(shell)[-2000:]
            run_checked(shell, f"rm -rf {UPDATES}")
        report.status = read_status(shell)
        if plan.hostname and report.status.get("hostname") != plan.hostname:
            raise AppsdkError(f"hostname is {report.status.get('hostname')!r} after "
                              f"provisioning, not {plan.hostname!r}")
        report.ok = True
    except (AppsdkError, OSError) as exc:
        report.error = str(exc)
    finally:
        report.seconds = time.monotonic() - start
        if console is not None:
            console.close()
    return report
