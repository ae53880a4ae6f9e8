"""The release set: what a release directory publishes and what the builds given add to
it. build.json is read and checked, OUT's appsdk-release.json (which records what each
published file is) loaded and its signed SHA256SUMS verified, and the two merged; a
published name never changes bytes. Nothing here writes to OUT (update/release.py does)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from appsdk.contract.buildinfo import BUILD_JSON, load_record, plain_name
from appsdk.contract.updatefiles import SUMS, SUMS_SIGNATURE, parse_sums, update_names
from appsdk.core.digest import sha256_file
from appsdk.core.errors import ConfigError, VerifyFailed
from appsdk.core.runner import Runner
from appsdk.core.version import __version__
from appsdk.spec.appliance import COMPRESSIONS, DEFAULT_COMPRESSION
from appsdk.trust import keys
from appsdk.trust.keys import SigningKey

MANIFEST = "appsdk-release.json"
SIGNATURE = SUMS_SIGNATURE
_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ARCH_HINT = ("release each architecture into its own directory (e.g. www/x86-64 and "
              "www/arm64) and point each build's update.url at its directory")
EDITED = ("the release directory was changed outside appsdk: restore it from a backup, or "
          "release every version you still want into a fresh directory")


@dataclass(frozen=True)
class Entry:
    """One published file, as appsdk-release.json records it."""

    version: str
    kind: str  # uki, usr, verity
    sha256: str
    size: int


@dataclass(frozen=True)
class Builds:
    """The builds given to one release, read and checked."""

    app_id: str
    arch: str
    entries: dict[str, Entry]  # file name -> what build.json says it is
    sources: dict[str, Path]  # file name -> the artifact in its build directory
    secure_boot_db: str | None = None  # SHA-256 of the db certificate the UKIs are signed for
    compression: str = DEFAULT_COMPRESSION  # of every update file: devices look for its suffix


_COMPRESSION_HINT = ("a device looks only for the suffix its own version was built with: keep "
                     "update.compression as the first published version had it, or release "
                     "into a new directory")


# --- inputs: build.json and what OUT already publishes -------------------------------------

def _field(record: Any, where: str, *path: str) -> Any:
    value = record
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise ConfigError("missing (built by an old appsdk?)", file=where,
                              field=".".join(path), hint="rebuild with this appsdk")
        value = value[part]
    return value


def _text(record: Any, where: str, *path: str) -> str:
    value = _field(record, where, *path)
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a non-empty string", file=where, field=".".join(path))
    return value


def _entry(record: Any, where: str, path: tuple[str, ...], version: str, kind: str) -> Entry:
    sha256, size = _text(record, where, *path, "sha256"), _field(record, where, *path, "size")
    if not _SHA256.fullmatch(sha256):
        raise ConfigError("not a sha256", file=where, field=".".join((*path, "sha256")))
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ConfigError("not a size in bytes", file=where, field=".".join((*path, "size")))
    return Entry(version, kind, sha256, size)


def _old_build(where: str, field: str) -> NoReturn:
    raise ConfigError("missing (built by an old appsdk?)", file=where, field=field,
                      hint="rebuild with this appsdk")


def read_builds(builds: list[Path], key: SigningKey) -> Builds:
    first: tuple[str, str, Path] | None = None
    signed_for: str | None = None
    compression = DEFAULT_COMPRESSION
    entries: dict[str, Entry] = {}
    sources: dict[str, Path] = {}
    for build in builds:
        directory = build if build.is_dir() else build.parent
        where = str(directory / BUILD_JSON)
        record = load_record(build)  # every field typed and checked (names are plain)
        app_id, version = record.id, record.version
        arch = record.board.arch or _old_build(where, "board.arch")
        sb = record.secure_boot.db_cert_sha256 if record.secure_boot else None
        if first is None:
            first, signed_for = (app_id, arch, directory), sb
            compression = record.update.compression
        if app_id != first[0]:
            raise ConfigError(f"builds of {first[0]} and {app_id} cannot share a release",
                              hint="one release directory per appliance")
        if arch != first[1]:
            raise ConfigError(f"builds for {first[1]} ({first[2]}) and {arch} ({directory}) "
                              "cannot share a release (their update files have the same "
                              "names)", hint=_ARCH_HINT)
        if sb != signed_for:
            # A device whose firmware enforces one db refuses a UKI signed for another (or
            # not signed): it would use up its tries at the firmware, not in Linux.
            raise ConfigError(f"{first[2]} and {directory} are signed for different Secure "
                              f"Boot keys ({_db(signed_for)} and {_db(sb)})",
                              hint="build every version of a release with the same "
                              "secure_boot key set")
        if record.update.compression != compression:
            raise ConfigError(f"{first[2]} and {directory} compress their update files "
                              f"differently ({compression} and {record.update.compression})",
                              hint=_COMPRESSION_HINT)
        signer = record.update.signed_by
        if signer and signer != key.fingerprint:
            raise ConfigError(f"{directory} was built for key {signer}, not {key.fingerprint}",
                              hint="devices only accept the key baked into their image")
        for kind, expected in update_names(app_id, version, compression).items():
            field = f"artifacts.update-{kind}"
            artifact = record.artifacts.get(f"update-{kind}") or _old_build(where, field)
            name = artifact.file
            if name != expected:
                raise ConfigError(f"names {name!r}; devices look for {expected!r}",
                                  file=where, field=field, hint="rebuild")
            entry = Entry(version, kind, artifact.sha256, artifact.size)
            if name in entries and entries[name] != entry:
                raise ConfigError(f"{sources[name].parent} and {directory} are two different "
                                  f"builds of version {version}", hint="give one build per "
                                  "version")
            entries[name], sources[name] = entry, directory / name
    assert first is not None  # release() refuses an empty list
    return Builds(first[0], first[1], entries, sources, signed_for, compression)


def _db(sha256: str | None) -> str:
    return f"db {sha256[:16]}" if sha256 else "none: not signed"


def resolve_target(out: Path) -> Path:
    if out.is_symlink() and not out.exists():
        raise ConfigError("a dangling symlink", file=str(out), hint="remove it or fix its target")
    try:
        target = out.resolve()  # a symlinked OUT: its target is what gets swapped
    except RuntimeError:  # a symlink loop (Python 3.11; later versions raise OSError)
        raise ConfigError("a symlink loop", file=str(out)) from None
    if target.exists() and not target.is_dir():
        raise ConfigError("not a directory", file=str(out),
                          hint="give a directory for the release (it is created if missing)")
    if target.parent == target:
        raise ConfigError("cannot release into /", file=str(out))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.stat().st_dev != target.parent.stat().st_dev:
        raise ConfigError("a mount point: a release is switched in by renaming a sibling "
                          "directory, which cannot cross filesystems", file=str(out),
                          hint="release into a directory inside it (e.g. OUT/x86-64) and "
                          "point update.url there")
    return target


def read_published(out: Path, new: Builds, key: SigningKey, runner: Runner) -> dict[str, Entry]:
    """What OUT publishes now, with its signature checked; refuses what a release may not
    touch. The files themselves are re-hashed when staged."""
    if not out.exists():
        return {}
    present = sorted(os.listdir(out))
    if MANIFEST not in present:
        if not present:
            return {}
        raise ConfigError(f"no {MANIFEST} (an older appsdk's release, or not a release): "
                          f"holds {listing(present)}", file=str(out),
                          hint="release every version you still want into a fresh directory "
                          "and point the server there; appsdk signs only files whose "
                          "build.json it has read")
    app_id, arch, files, signed_for, compression = load_manifest(out / MANIFEST)
    if app_id != new.app_id:
        raise ConfigError(f"publishes {app_id!r}, not {new.app_id!r}", file=str(out),
                          hint="one release directory per appliance")
    if arch != new.arch:
        raise ConfigError(f"publishes the {arch} release; these builds are for {new.arch}",
                          file=str(out), hint=_ARCH_HINT)
    if signed_for != new.secure_boot_db:
        raise ConfigError(f"publishes UKIs signed for Secure Boot {_db(signed_for)}; these "
                          f"builds are signed for {_db(new.secure_boot_db)}", file=str(out),
                          hint="devices enrolled with one db key refuse the other's UKIs: "
                          "build with the published key set, or release into a new directory")
    if compression != new.compression:
        raise ConfigError(f"publishes {compression} update files; these builds' are "
                          f"{new.compression}", file=str(out), hint=_COMPRESSION_HINT)
    strays = [name for name in present if name not in {*files, MANIFEST, SUMS, SIGNATURE}]
    if strays:
        raise ConfigError(f"holds files no release vouches for: {listing(strays)}",
                          file=str(out), hint="move them out of it: appsdk signs only files "
                          "whose build.json it has read, and never deletes what it did not "
                          "publish")
    check_signed(out, files, key, runner)
    return files


def listing(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def load_manifest(path: Path) -> tuple[str, str, dict[str, Entry], str | None, str]:
    """(id, arch, files, Secure Boot db certificate SHA-256 or None, compression) of a
    manifest."""
    where = str(path)
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
        data = None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ConfigError(f"not a format-{_FORMAT} release manifest", file=where,
                          hint=f"made by another appsdk? use that one; if not, {EDITED}")
    try:
        listed = _field(data, where, "files")
        if not isinstance(listed, dict):
            raise ConfigError("not a table of files", file=where, field="files")
        files: dict[str, Entry] = {}
        for name in listed:
            plain_name(name, path, "files")
            key = ("files", name)
            kind = _text(data, where, *key, "kind")
            files[name] = _entry(data, where, key, _text(data, where, *key, "version"), kind)
        signed_for = data.get("secure_boot_db")
        if signed_for is not None and not (isinstance(signed_for, str)
                                           and _SHA256.fullmatch(signed_for)):
            raise ConfigError("not a sha256", file=where, field="secure_boot_db")
        compression = data.get("compression", DEFAULT_COMPRESSION)  # older: xz
        if not (isinstance(compression, str) and compression in COMPRESSIONS):
            raise ConfigError(f"{json.dumps(compression)[:20]} is not a compression",
                              file=where, field="compression")
        return (_text(data, where, "id"), _text(data, where, "arch"), files, signed_for,
                compression)
    except ConfigError as exc:  # whatever the field, the directory was edited
        raise ConfigError(exc.message, hint=EDITED) from None


def check_signed(out: Path, files: dict[str, Entry], key: SigningKey, runner: Runner) -> None:
    # The manifest decides what gets signed again, so it must itself be the signed one.
    sums, signature = out / SUMS, out / SIGNATURE
    if not sums.is_file() or not signature.is_file():
        raise VerifyFailed(f"{out} has {MANIFEST} but no signed {SUMS}", hint=EDITED)
    try:
        keys.verify(key.public_keyring, sums, signature, runner)
    except VerifyFailed:
        raise VerifyFailed(f"{signature} does not verify with {key.public_keyring}",
                           hint="OUT was signed with another key or changed outside appsdk; "
                           "release into a fresh directory") from None
    listed = parse_sums(sums.read_text(errors="replace"), str(sums))
    expected = {**{n: e.sha256 for n, e in files.items()}, MANIFEST: sha256_file(out / MANIFEST)}
    if listed != expected:
        raise VerifyFailed(f"{out / MANIFEST} does not match the signed {SUMS}", hint=EDITED)


def merge(previous: dict[str, Entry], new: Builds) -> dict[str, Entry]:
    """The new builds' files not yet published; a published name never changes bytes."""
    added: dict[str, Entry] = {}
    for name, entry in new.entries.items():
        if name not in previous:
            added[name] = entry
        elif previous[name].sha256 != entry.sha256:
            raise ConfigError(f"version {entry.version} is already published with other bytes "
                              f"({name})", file=str(new.sources[name].parent / BUILD_JSON),
                              hint="published files never change under a name: build a new "
                              "version")
    return added


# --- the manifest written with a new set ------------------------------------------------

def format_manifest(new: Builds, files: dict[str, Entry]) -> str:
    data = {"format": _FORMAT, "appsdk": __version__, "id": new.app_id, "arch": new.arch,
            "secure_boot_db": new.secure_boot_db, "compression": new.compression,
            "files": {name: asdict(entry) for name, entry in sorted(files.items())}}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
