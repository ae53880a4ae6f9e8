"""Provisioning over a serial console: per-device identity into /var, files pushed
binary-safe, status read back, optionally an update installed from pushed files.

A plan (YAML) holds what every device gets plus a list of devices with their own values;
`{serial}`, `{hostname}` and `{vars.NAME}` are filled in per device (docs/provisioning.md)."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from appsdk.contract.updatefiles import SUMS, SUMS_SIGNATURE, parse_sums
from appsdk.core.errors import AppsdkError, ConfigError
from appsdk.core.progress import Event, NullReporter, Reporter
from appsdk.deliver.console import SerialConsole, Shell
from appsdk.deliver.filepush import PushResult, push_bytes, run_checked
from appsdk.spec import fields
from appsdk.spec.fields import FieldError, Reader

COMMON = {"login", "hostname", "update_url", "authorized_keys", "credentials", "files"}
IDENTITY = "/var/lib/appsdk/identity"
UPDATES = "/var/lib/appsdk/updates"
T = TypeVar("T")


@dataclass(frozen=True)
class FileSpec:
    """A file to push: `dest` an absolute device path, `mode` the mode as an int (0o644) or
    its octal digits ("0644"). Checked when made, so plans built in code are checked too."""

    src: Path
    dest: str
    mode: int = 0o644

    def __post_init__(self) -> None:
        object.__setattr__(self, "dest", fields.device_path(self.dest, "dest"))
        object.__setattr__(self, "mode", fields.file_mode(self.mode, "mode"))


@dataclass(frozen=True)
class DevicePlan:
    """Everything one device gets; paths are resolved, templates filled in. Every value is
    checked when the plan is made (by load_plan, apply_overrides or Python code alike)."""

    serial: str = ""
    hostname: str = ""
    update_url: str = ""
    authorized_keys: tuple[Path, ...] = ()
    credentials: tuple[tuple[str, Path], ...] = ()
    files: tuple[FileSpec, ...] = ()
    user: str = "root"
    password: str | None = None

    def __post_init__(self) -> None:
        for name, check in (("serial", fields.serial), ("hostname", fields.hostname),
                            ("update_url", fields.update_url)):
            if getattr(self, name) != "":
                object.__setattr__(self, name, check(getattr(self, name), name))
        for name, _ in self.credentials:
            fields.credential_name(name, "credentials")
        if not all(isinstance(f, FileSpec) for f in self.files):
            raise ConfigError("files must be FileSpec objects", field="files")
        fields.user_name(self.user, "user")
        if self.password is not None:
            fields.password(self.password, "password")


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
        else:
            serial = fields.serial(serial, "--device")
            if self.entries and serial not in self.entries:
                raise ConfigError(f"no device with serial {serial!r} in the plan",
                                  file=str(self.path), hint="known: " + ", ".join(self.entries))
        entry = self.entries.get(serial)
        values: dict[str, Any] = {"serial": serial,
                                  "vars": dict(entry.raw("vars") or {}) if entry else {}}
        plan = _device(self.top, DevicePlan(serial=serial), self.path.parent, values)
        if entry is not None:
            values["hostname"] = plan.hostname
            plan = _device(entry, plan, self.path.parent, values)
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
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise src.error(where, f"{{{key}}} is not a text value",
                            hint="vars hold names and numbers, e.g. {channel: beta}")
        return str(value)

    return re.sub(r"\{([A-Za-z0-9_.-]+)\}", one, template)


def _filled(r: Reader, key: str, values: dict[str, Any],
            validator: Callable[[object, str], T]) -> T:
    """A template field: filled in, then checked by the field's validator."""
    where = (*r.path, key)
    text = _fill(r.text(key), values, r.src, where)
    try:
        return validator(text, key)
    except FieldError as exc:
        raise r.src.error(where, exc.reason, exc.hint) from None


def _file_at(src: Any, root: Path, text: str, where: tuple[Any, ...]) -> Path:
    try:
        path = (root / text).resolve()
        found = path.is_file()
    except (OSError, RuntimeError):  # unreadable directory, symlink loop
        found = False
    if not found:
        raise src.error(where, f"file {text!r} not found (relative to {root})")
    return path


def _public_keys(src: Any, path: Path, where: tuple[Any, ...]) -> Path:
    try:
        return fields.authorized_key_file(str(path))
    except FieldError as exc:
        raise src.error(where, exc.reason, exc.hint) from None


def _device(r: Reader, base: DevicePlan, root: Path, values: dict[str, Any]) -> DevicePlan:
    src = r.src
    files = list(base.files)
    raw_files = r.raw("files") or []
    if not isinstance(raw_files, list):
        raise src.error((*r.path, "files"), "must be a list of {src, dest, mode}")
    for i, _ in enumerate(raw_files):
        fr = Reader(src, (*r.path, "files", i), raw_files[i], {"src", "dest", "mode"})
        dest = _filled(fr, "dest", values, fields.device_path)
        # Plain YAML digits (mode: 644) arrive as an int: they are the octal digits written.
        mode = fr.check("mode", lambda v, f: fields.file_mode(
            str(v) if isinstance(v, int) and not isinstance(v, bool) else v, f), 0o644)
        files.append(FileSpec(_file_at(src, root, fr.text("src"), (*fr.path, "src")), dest,
                              mode))
    keys = base.authorized_keys + tuple(
        _public_keys(src, _file_at(src, root, k, where), where)
        for i, k in enumerate(r.texts("authorized_keys"))
        for where in [(*r.path, "authorized_keys", i)])
    creds = dict(base.credentials)
    cr = r.sub("credentials", None)
    for name in cr.data:
        where = (*cr.path, str(name))
        try:
            checked = fields.credential_name(name, "credentials")
        except FieldError as exc:
            raise src.error(where, exc.reason, exc.hint) from None
        creds[checked] = _file_at(src, root, cr.text(name), where)
    hostname = (_filled(r, "hostname", values, fields.hostname) if r.has("hostname")
                else base.hostname)
    url = (_filled(r, "update_url", values, fields.update_url) if r.has("update_url")
           else base.update_url)
    login = r.sub("login", {"user", "password"})
    return replace(base, hostname=hostname, update_url=url, authorized_keys=keys,
                   credentials=tuple(sorted(creds.items())), files=tuple(files),
                   user=login.check("user", fields.user_name, base.user),
                   password=login.check("password", fields.password) if login.has("password")
                   else base.password)


def load_plan(path: Path) -> Plan:
    """Read and check a plan: every device it lists is resolved now, so a missing file or
    an unknown template variable is reported before anything is provisioned."""
    from appsdk.spec.yamlsrc import load

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
        serial = entry.check("serial", fields.serial)
        if serial in entries:
            raise src.error(("devices", i, "serial"), f"{serial!r} is listed twice")
        entry.sub("vars", None)  # must be a mapping
        entries[serial] = entry
    plan = Plan(path, src, top, entries)
    for serial in entries or [""]:
        plan.device(serial or None)
    return plan


def select_device(plan: Path | None, device: str | None) -> DevicePlan:
    """Where `appsdk provision serial` starts: that device of a plan file, or an empty plan
    for the serial `device`."""
    if plan is not None:
        return load_plan(plan).device(device)
    return DevicePlan(serial=fields.serial(device, "--device") if device is not None else "")


def parse_file_spec(spec: str, flag: str = "--file") -> FileSpec:
    """SRC:/ABSOLUTE/DEST[:MODE], as --file takes it."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise FieldError(flag, f"{spec!r} is not SRC:/ABSOLUTE/DEST[:MODE]")
    if not Path(parts[0]).is_file():
        raise FieldError(flag, f"{parts[0]!r} is not a file", hint="use SRC:/ABSOLUTE/DEST[:MODE]")
    mode = fields.file_mode(parts[2], flag) if len(parts) == 3 else 0o644
    return FileSpec(Path(parts[0]), fields.device_path(parts[1], flag), mode)


def parse_credential_spec(spec: str, flag: str = "--credential") -> tuple[str, Path]:
    """NAME=FILE, as --credential takes it."""
    name, _, path = spec.partition("=")
    if not path or not Path(path).is_file():
        raise FieldError(flag, f"{spec!r}: use NAME=FILE with an existing file")
    return fields.credential_name(name, flag), Path(path)


def apply_overrides(plan: DevicePlan, *, hostname: str | None = None, serial: str | None = None,
                    update_url: str | None = None, files: Iterable[str | FileSpec] = (),
                    credentials: Iterable[str | tuple[str, Path]] = (),
                    authorized_keys: Iterable[Path] = (), user: str | None = None,
                    password: str | None = None) -> DevicePlan:
    """`plan` with command-line values on top, each through the validator of the plan
    field it overrides; errors name the flag (--hostname, --file, ...). Files, keys and
    credentials add to the plan's (a credential of the same name replaces the plan's)."""
    def given(value: str | None, check: Callable[[object, str], str], flag: str,
              old: str) -> str:
        return old if value is None else check(value, flag)

    creds = dict(plan.credentials)
    for item in credentials:
        name, path = parse_credential_spec(item) if isinstance(item, str) else item
        creds[fields.credential_name(name, "--credential")] = path
    keys = tuple(authorized_keys)
    for key in keys:
        if not Path(key).is_file():
            raise FieldError("--authorized-key", f"{str(key)!r} is not a file")
        fields.authorized_key_file(str(key), "--authorized-key")
    return replace(
        plan, hostname=given(hostname, fields.hostname, "--hostname", plan.hostname),
        serial=given(serial, fields.serial, "--serial", plan.serial),
        update_url=given(update_url, fields.update_url, "--update-url", plan.update_url),
        files=plan.files + tuple(parse_file_spec(f) if isinstance(f, str) else f
                                 for f in files),
        authorized_keys=plan.authorized_keys + tuple(Path(k) for k in keys),
        credentials=tuple(sorted(creds.items())),
        user=given(user, fields.user_name, "--user", plan.user),
        password=plan.password if password is None else fields.password(password, "--password"))


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
    sums, signature = update_dir / SUMS, update_dir / SUMS_SIGNATURE
    if not sums.is_file() or not signature.is_file():
        raise ConfigError("not an update directory: needs SHA256SUMS and SHA256SUMS.gpg",
                          file=str(update_dir), hint="use a build or `appsdk release` output")
    try:
        text = sums.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 (byte offset {exc.start})", file=str(sums),
                          hint="use a build or `appsdk release` output") from None
    # Names, never paths: a line naming /etc/shadow must not push the host's file.
    files = [update_dir / n for n in parse_sums(text, str(sums))]
    for path in files:
        if not path.is_file():
            raise ConfigError("is listed in SHA256SUMS but is not a file there",
                              file=str(path), hint="copy the whole update directory")
    return [*files, sums, signature]


def install_local_update(shell: Shell, directory: str = UPDATES) -> str:
    """Install the update whose SHA256SUMS, signature and artifacts are in `directory` on
    the device: the image's own transfer definitions, with file://DIRECTORY/ as source.
    systemd-pull reads file:// URLs like http:// ones, so SHA256SUMS.gpg is verified
    against the image's keyring exactly as for a download. appsdk-update runs sysupdate
    with the ESP writable and syncs before it reports success. Returns sysupdate's output."""
    defs = "/run/appsdk-local-update.d"
    # transfer_with_source (appsdk-lib) rewrites the source line without sed, so a
    # directory holding & | or % arrives as written; a subshell keeps the login shell clean.
    url = shlex.quote("file://" + directory.rstrip("/") + "/")
    command = (
        f"(rm -rf {defs} && mkdir -p {defs} && . /usr/lib/appsdk/appsdk-lib && "
        "for t in /usr/lib/sysupdate.d/*.transfer; do "
        f"transfer_with_source {url} < \"$t\" > {defs}/\"${{t##*/}}\" || exit 1; done && "
        f"/usr/bin/appsdk-update --no-pager --definitions={defs} update 2>&1)")
    return run_checked(shell, command, timeout=900, attempts=1)


def provision_serial(port: str, plan: DevicePlan, *, baud: int = 115200,
                     update_dir: Path | None = None, reporter: Reporter | None = None,
                     log: Path | None = None, shell: Shell | None = None,
                     line_rate: float | None = None) -> ProvisionReport:
    """Provision one device on `port` (anything pyserial opens). Never raises for a device
    problem: the report says what failed (ok=False, error=...)."""
    reporter = reporter or NullReporter()
    # Input faults are the caller's, found before a device is waited for or logged in on.
    updates = update_files(update_dir) if update_dir is not None else []
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
        pushes += [(f"{UPDATES}/{p.name}", p.read_bytes(), 0o644) for p in updates]
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
