"""build.json: what a build directory holds. Kept apart from the pipeline so that flash,
inspect and release read it without importing the build machinery.

`load_build` validates every field a reader uses (in `check_record`), so readers index the
dict without guarding; a flaw is a ConfigError naming build.json and the field."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from appsdk.contract.record import SCHEMA, BuildRecord
from appsdk.core.errors import ConfigError
from appsdk.core.inputfile import open_regular
from appsdk.spec.appliance import COMPRESSIONS, ID_PATTERN, VERSION_PATTERN

BUILD_JSON = "build.json"
MAX_BYTES = 4 * 1024 * 1024  # a real build.json is a few KiB
HINT = "build.json is written by `appsdk build`: rebuild rather than edit it"
SHA256 = r"[0-9a-f]{64}"
REQUIRED_ARTIFACTS = ("image", "bmap")
EMULATOR_KEYS = {"name", "qemu", "machine", "cpu", "memory_mib", "firmware_code",
                 "firmware_vars", "bios", "watchdog", "extra_args", "console", "tpm"}
# A QEMU option value: names and key=value lists, nothing a shell or QEMU would split.
QEMU_VALUE = r"[A-Za-z0-9][A-Za-z0-9_.,=:+-]*"
QEMU_OPTIONS = r"-(device|global|smp|rtc|no-hpet)"  # options that touch only the guest
# Sub-options that open host files, sockets, programs or descriptors.
HOST_ACCESS = re.compile(r"(^|,)[\w-]*(file|path|script|sock|dir|chardev|fd|exec)[\w-]*=",
                         re.IGNORECASE)
# A pinned firmware file (component:file) or system firmware under /usr.
FIRMWARE_REF = (r"(?!.*(^|/)\.\.(/|$))"
                r"([a-z0-9][a-z0-9.+-]*:[\w./+-]+|/usr/(share|lib)/[\w./+-]+)")


def _fail(file: Path, field: str | None, message: str) -> ConfigError:
    return ConfigError(message, file=str(file), field=field, hint=HINT)


def plain_name(value: object, file: Path, field: str) -> str:
    """A file name that stays in its directory: no '/', not '.' or '..', no NUL or other
    control characters (names end up in SHA256SUMS lines), no leading '-' (an option)."""
    if not isinstance(value, str) or not value:
        raise _fail(file, field, f"must be a file name, got {value!r}")
    bad = ("/" in value or value in (".", "..") or value.startswith("-")
           or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
           or len(value.encode("utf-8", "surrogatepass")) > 255)
    if bad:
        raise _fail(file, field, f"{value!r} is not a plain file name (no '/', '.', '..', "
                    "control characters or leading '-')")
    return value


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], file: Path,
         field: str, required: bool = True) -> Any:
    if key not in data or data[key] is None:
        if required:
            raise _fail(file, field, "is missing")
        return None
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python: `true` is no size.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join({"dict": "an object", "str": "a string", "int": "an integer"}.get(
            k.__name__, k.__name__) for k in kinds)
        raise _fail(file, field, f"must be {names}, got {json.dumps(value)[:60]}")
    return value


def _text(data: dict[str, Any], key: str, file: Path, field: str, pattern: str | None = None,
          required: bool = True) -> str | None:
    value = _get(data, key, str, file, field, required)
    if value is not None and pattern and not re.fullmatch(pattern, value):
        raise _fail(file, field, f"{value[:60]!r} is not valid")
    return value  # type: ignore[no-any-return]


def _count(data: dict[str, Any], key: str, file: Path, field: str,
           required: bool = True) -> int | None:
    value = _get(data, key, int, file, field, required)
    if value is not None and not 0 <= value < 2**63:
        raise _fail(file, field, f"{value} is not a size in bytes")
    return value  # type: ignore[no-any-return]


def _artifacts(data: dict[str, Any], file: Path) -> None:
    artifacts = _get(data, "artifacts", dict, file, "artifacts")
    for kind in REQUIRED_ARTIFACTS:
        if kind not in artifacts:
            raise _fail(file, f"artifacts.{kind}", "is missing")
    seen: dict[str, str] = {}
    for kind, entry in artifacts.items():
        field = f"artifacts.{kind}"
        _get(artifacts, kind, dict, file, field)
        name = plain_name(_get(entry, "file", str, file, f"{field}.file"), file,
                          f"{field}.file")
        if name in seen:
            raise _fail(file, f"{field}.file", f"names {name!r}, as artifacts.{seen[name]} "
                        "does")
        seen[name] = kind
        _text(entry, "sha256", file, f"{field}.sha256", SHA256)
        _count(entry, "size", file, f"{field}.size")


def _texts(data: dict[str, Any], key: str, file: Path, field: str,
           pattern: str | None = None) -> None:
    for index, value in enumerate(_get(data, key, list, file, field, required=False) or ()):
        if not isinstance(value, str) or (pattern and not re.fullmatch(pattern, value)):
            raise _fail(file, f"{field}[{index}]", f"{json.dumps(value)[:60]} is not valid")


def _mapping(data: dict[str, Any], key: str, kind: type, file: Path, field: str) -> None:
    for name, value in (_get(data, key, dict, file, field, required=False) or {}).items():
        _get({name: value}, name, kind, file, f"{field}.{name}")


def _schema(data: dict[str, Any], file: Path) -> None:
    schema = _count(data, "schema", file, "schema", required=False)
    if schema is not None and not 1 <= schema <= SCHEMA:
        raise ConfigError(f"schema {schema}: written by another appsdk (this one reads "
                          f"schemas 1 to {SCHEMA})", file=str(file), field="schema",
                          hint="use the appsdk that built it, or rebuild")


def _emulators(board: dict[str, Any], file: Path) -> None:
    """The emulator profiles a build recorded. `appsdk run` starts QEMU from them, so a
    build.json cannot name another program, host files (beyond system firmware) or QEMU
    options that read or write the host."""
    listed = _get(board, "emulators", list, file, "board.emulators", required=False) or ()
    for index, em in enumerate(listed):
        field = f"board.emulators[{index}]"
        _get({"e": em}, "e", dict, file, field)
        unknown = set(em) - EMULATOR_KEYS
        if unknown:
            raise _fail(file, field, f"unknown key {sorted(unknown)[0]!r}")
        _text(em, "name", file, f"{field}.name", r"[a-z0-9][a-z0-9.-]*")
        _text(em, "qemu", file, f"{field}.qemu", r"qemu-system-[a-z0-9_]+")
        for key in ("machine", "cpu"):
            _text(em, key, file, f"{field}.{key}", QEMU_VALUE)
        memory = _count(em, "memory_mib", file, f"{field}.memory_mib")
        if memory is not None and not 64 <= memory <= 1 << 20:
            raise _fail(file, f"{field}.memory_mib", f"{memory} MiB is not a memory size")
        _texts(em, "firmware_code", file, f"{field}.firmware_code", FIRMWARE_REF)
        _texts(em, "firmware_vars", file, f"{field}.firmware_vars", FIRMWARE_REF)
        _text(em, "bios", file, f"{field}.bios", FIRMWARE_REF, required=False)
        _text(em, "watchdog", file, f"{field}.watchdog", QEMU_VALUE, required=False)
        _text(em, "console", file, f"{field}.console", r"tty[A-Za-z]+[0-9]+", required=False)
        _text(em, "tpm", file, f"{field}.tpm", r"tpm-[a-z-]+", required=False)
        _texts(em, "extra_args", file, f"{field}.extra_args", QEMU_VALUE + "|" + QEMU_OPTIONS)
        for arg in em.get("extra_args") or ():
            if HOST_ACCESS.search(arg):
                raise _fail(file, f"{field}.extra_args", f"{arg[:60]!r} reaches the host")


def _details(data: dict[str, Any], file: Path) -> None:
    """What the record holds besides what flash and release need: typed, so that
    BuildRecord.from_json never meets a wrong type."""
    _text(data, "appsdk", file, "appsdk", required=False)
    _text(data, "kernel", file, "kernel", required=False)
    _texts(data, "esp_files", file, "esp_files")
    for index, part in enumerate(_get(data, "partitions", list, file, "partitions",
                                      required=False) or ()):
        field = f"partitions[{index}]"
        _get({"p": part}, "p", dict, file, field)
        if set(part) != {"label", "type", "uuid", "offset", "size"}:
            raise _fail(file, field, "needs exactly label, type, uuid, offset, size")
        for key in ("label", "type", "uuid"):
            _text(part, key, file, f"{field}.{key}")
        for key in ("offset", "size"):
            _count(part, key, file, f"{field}.{key}")
    bmap = _get(data, "bmap", dict, file, "bmap", required=False) or {}
    for key in ("mapped_bytes", "image_size"):
        _count(bmap, key, file, f"bmap.{key}", required=False)
    _mapping(data, "partition_sizes", int, file, "partition_sizes")
    _mapping(data, "tools", str, file, "tools")
    _get(data, "seconds", (int, float), file, "seconds", required=False)
    for name, pin in (_get(data, "firmware", dict, file, "firmware", required=False)
                      or {}).items():
        _get({name: pin}, name, dict, file, f"firmware.{name}")
        _text(pin, "version", file, f"firmware.{name}.version")
        _text(pin, "sha256", file, f"firmware.{name}.sha256", SHA256)
    verity = _get(data, "verity", dict, file, "verity", required=False) or {}
    _text(verity, "roothash", file, "verity.roothash", r"[0-9a-f]{64,128}", required=False)
    secure_boot = _get(data, "secure_boot", dict, file, "secure_boot", required=False)
    if secure_boot is not None:
        # pcr_key_sha256 came later (stop 16): records from before have no such key.
        if not {"db_cert_sha256", "enroll"} <= set(secure_boot) <= {
                "db_cert_sha256", "enroll", "pcr_key_sha256"}:
            raise _fail(file, "secure_boot",
                        "needs db_cert_sha256 and enroll (and may have pcr_key_sha256), only")
        _text(secure_boot, "db_cert_sha256", file, "secure_boot.db_cert_sha256", SHA256)
        _text(secure_boot, "enroll", file, "secure_boot.enroll", r"[a-z-]+")
        if secure_boot.get("pcr_key_sha256") is not None:  # null: no signed PCR policy
            _text(secure_boot, "pcr_key_sha256", file, "secure_boot.pcr_key_sha256", SHA256)


def check_record(data: object, file: Path) -> dict[str, Any]:
    """`data` (parsed build.json) with every field a reader uses checked."""
    if not isinstance(data, dict):
        raise _fail(file, None, f"must be a JSON object, got {type(data).__name__}")
    _schema(data, file)
    _text(data, "id", file, "id", ID_PATTERN)
    _text(data, "version", file, "version", VERSION_PATTERN)
    board = _get(data, "board", dict, file, "board")
    plain_name(_get(board, "name", str, file, "board.name"), file, "board.name")
    for key in ("arch", "firmware_chain", "console"):
        _text(board, key, file, f"board.{key}", required=False)
    _emulators(board, file)
    _artifacts(data, file)
    _count(data, "min_device_size", file, "min_device_size", required=False)
    _text(data, "cmdline", file, "cmdline", required=False)
    update = _get(data, "update", dict, file, "update", required=False)
    if update is not None:
        for key in ("url", "signed_by"):
            _text(update, key, file, f"update.{key}", required=False)
        _get(update, "automatic", bool, file, "update.automatic", required=False)
        _text(update, "compression", file, "update.compression",
              "|".join(COMPRESSIONS), required=False)
    _details(data, file)
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_record(raw: bytes, file: Path) -> dict[str, Any]:
    """build.json's bytes as a checked record."""
    if len(raw) > MAX_BYTES:
        raise _fail(file, None, f"larger than {MAX_BYTES // 1024 // 1024} MiB: not a "
                    "build record")
    if (nul := raw.find(0)) >= 0:
        raise _fail(file, None, f"NUL byte at offset {nul}: not a build record")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(file, None, f"not UTF-8 (byte offset {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc.msg} (column {exc.colno})", file=str(file),
                          line=exc.lineno, hint=HINT) from None
    except (ValueError, RecursionError) as exc:  # duplicate keys, huge numbers, deep nesting
        raise _fail(file, None, f"not a build record: {str(exc)[:100]}") from None
    return check_record(data, file)


def load_build(path: Path) -> dict[str, Any]:
    """Read and check build.json of a build directory (or the file itself)."""
    file = path / BUILD_JSON if path.is_dir() else path
    try:
        with open_regular(file, "build.json") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("no build.json: not a finished build directory", file=str(file),
                          hint="run `appsdk build` first") from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(file)) from None
    return parse_record(raw, file)


def locate_image(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """(disk image, build record) for a build directory or an image file. An image's
    record is the build.json beside it, and only if that build.json names this image."""
    if path.is_dir():
        record = load_build(path)
        image = path / record["artifacts"]["image"]["file"]
        if not image.is_file():
            raise ConfigError(f"build.json names the image {image.name}, which is missing",
                              file=str(image), hint="rebuild, or copy the image back")
        return image, record
    if not path.is_file():
        raise ConfigError("no such image or build directory", file=str(path))
    sibling = path.parent / BUILD_JSON
    if sibling.exists():
        record = load_build(sibling)
        if record["artifacts"]["image"]["file"] == path.name:
            return path, record
    return path, None


def load_record(path: Path) -> BuildRecord:
    """build.json of a build directory (or the file itself) as a typed record."""
    file = path / BUILD_JSON if path.is_dir() else path
    return BuildRecord.from_json(load_build(path), file)


def locate_build(path: Path) -> tuple[Path, BuildRecord | None]:
    """locate_image, with the record typed."""
    image, data = locate_image(path)
    if data is None:
        return image, None
    return image, BuildRecord.from_json(data, path / BUILD_JSON if path.is_dir()
                                        else path.parent / BUILD_JSON)


def write_record(record: BuildRecord, directory: Path) -> Path:
    """build.json into a build directory, atomically (it marks the build as finished: a
    reader sees the old record or the new one, never part of one)."""
    target = directory / BUILD_JSON
    tmp = directory / f".{BUILD_JSON}.tmp"
    text = json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target
