"""The provisioning plan: what every device gets plus a list of devices with their own
values, read from YAML (load_plan) or built in code, with command-line overrides on top.
`{serial}`, `{hostname}` and `{vars.NAME}` are filled in per device (docs/provisioning.md).
Every value is checked when a plan is made; nothing here touches a device."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from appsdk.core.errors import ConfigError, Option
from appsdk.spec import fields
from appsdk.spec.fields import FieldError
from appsdk.spec.reader import Reader

COMMON = {"login", "hostname", "update_url", "authorized_keys", "credentials", "files"}
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
                                  "one by its serial", file=str(self.path),
                                  hint="known: " + ", ".join(self.entries),
                                  remedy=Option("device"))
            serial = next(iter(self.entries), "")
        else:
            serial = fields.serial(serial, Option("device"))
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
    return DevicePlan(serial=fields.serial(device, Option("device")) if device is not None else "")


def parse_file_spec(spec: str, flag: str = Option("file")) -> FileSpec:
    """SRC:/ABSOLUTE/DEST[:MODE], as --file takes it."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise FieldError(flag, f"{spec!r} is not SRC:/ABSOLUTE/DEST[:MODE]")
    if not Path(parts[0]).is_file():
        raise FieldError(flag, f"{parts[0]!r} is not a file", hint="use SRC:/ABSOLUTE/DEST[:MODE]")
    mode = fields.file_mode(parts[2], flag) if len(parts) == 3 else 0o644
    return FileSpec(Path(parts[0]), fields.device_path(parts[1], flag), mode)


def parse_credential_spec(spec: str, flag: str = Option("credential")) -> tuple[str, Path]:
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
        creds[fields.credential_name(name, Option("credential"))] = path
    keys = tuple(authorized_keys)
    for key in keys:
        if not Path(key).is_file():
            raise FieldError(Option("authorized_key"), f"{str(key)!r} is not a file")
        fields.authorized_key_file(str(key), Option("authorized_key"))
    return replace(
        plan, hostname=given(hostname, fields.hostname, Option("hostname"), plan.hostname),
        serial=given(serial, fields.serial, Option("serial"), plan.serial),
        update_url=given(update_url, fields.update_url, Option("update_url"), plan.update_url),
        files=plan.files + tuple(parse_file_spec(f) if isinstance(f, str) else f
                                 for f in files),
        authorized_keys=plan.authorized_keys + tuple(Path(k) for k in keys),
        credentials=tuple(sorted(creds.items())),
        user=given(user, fields.user_name, Option("user"), plan.user),
        password=plan.password if password is None
        else fields.password(password, Option("password")))
