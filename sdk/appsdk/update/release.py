"""`appsdk release`: a publishable update directory from one or more builds, as systemd-
sysupdate reads it (url-file source): the xz artifacts of every version side by side, one
SHA256SUMS over all of them, and its signature.

OUT is never edited in place: the new set is staged in a sibling directory, every file in it
checked (against build.json, or the sha256 it was published with), signed, the signature
verified, and only then swapped with OUT in one rename. appsdk-release.json records what
each published file is; nothing else is ever signed. docs/updates.md has the rules."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appsdk.contract.buildinfo import BUILD_JSON, load_build, plain_name
from appsdk.contract.updatefiles import (
    SUMS,
    SUMS_SIGNATURE,
    format_sums,
    parse_sums,
    update_names,
)
from appsdk.core.digest import CHUNK, sha256_file
from appsdk.core.errors import BuildError, ConfigError, VerifyFailed
from appsdk.core.runner import Runner
from appsdk.core.version import __version__
from appsdk.trust import keys
from appsdk.trust.keys import SigningKey

MANIFEST = "appsdk-release.json"
SIGNATURE = SUMS_SIGNATURE
_FORMAT = 1
_STAGE, _OLD = "appsdk-stage-", "appsdk-old-"  # sibling names: .OUT.<tag><random>
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ARCH_HINT = ("release each architecture into its own directory (e.g. www/x86-64 and "
              "www/arm64) and point each build's update.url at its directory")
_EDITED = ("the release directory was changed outside appsdk: restore it from a backup, or "
           "release every version you still want into a fresh directory")


@dataclass(frozen=True)
class Release:
    directory: Path
    versions: tuple[str, ...]  # the versions of the builds given
    files: tuple[str, ...]  # everything OUT now holds
    signature: Path
    arch: str = ""
    published: tuple[str, ...] = ()  # every version OUT now publishes


@dataclass(frozen=True)
class Entry:
    """One published file, as appsdk-release.json records it."""

    version: str
    kind: str  # uki, usr, verity
    sha256: str
    size: int


@dataclass(frozen=True)
class _Builds:
    app_id: str
    arch: str
    entries: dict[str, Entry]  # file name -> what build.json says it is
    sources: dict[str, Path]  # file name -> the artifact in its build directory


def release(out: Path, builds: list[Path], key: SigningKey, runner: Runner) -> Release:
    if not builds:
        raise ConfigError("no builds given", hint="appsdk release OUT BUILD_DIR...")
    try:
        new = _read_builds(builds, key)
        target = _target(out)
        with _locked(target):
            _clean_leftovers(target)
            previous = _published(target, new, key, runner)
            files = {**previous, **_merge(previous, new)}
            _stage_and_switch(target, previous, new, files, key, runner)
    except OSError as exc:
        raise BuildError(f"release into {out} failed: {exc}",
                         hint=f"check space and permissions in {Path(out).parent}; "
                         "OUT is unchanged (a release is switched in only when complete)"
                         ) from None
    return Release(directory=out, versions=tuple(sorted({e.version for e in new.entries.values()})),
                   files=(*sorted(files), MANIFEST, SUMS, SIGNATURE), signature=out / SIGNATURE,
                   arch=new.arch, published=tuple(sorted({e.version for e in files.values()})))


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


def _read_builds(builds: list[Path], key: SigningKey) -> _Builds:
    first: tuple[str, str, Path] | None = None
    entries: dict[str, Entry] = {}
    sources: dict[str, Path] = {}
    for build in builds:
        directory = build if build.is_dir() else build.parent
        where = str(directory / BUILD_JSON)
        record = load_build(build)  # checks its fields; the ones used here are checked again
        app_id, version = _text(record, where, "id"), _text(record, where, "version")
        arch = _text(record, where, "board", "arch")
        first = first or (app_id, arch, directory)
        if app_id != first[0]:
            raise ConfigError(f"builds of {first[0]} and {app_id} cannot share a release",
                              hint="one release directory per appliance")
        if arch != first[1]:
            raise ConfigError(f"builds for {first[1]} ({first[2]}) and {arch} ({directory}) "
                              "cannot share a release (their update files have the same "
                              "names)", hint=_ARCH_HINT)
        update = record.get("update")
        signer = update.get("signed_by") if isinstance(update, dict) else None
        if signer and signer != key.fingerprint:
            raise ConfigError(f"{directory} was built for key {signer}, not {key.fingerprint}",
                              hint="devices only accept the key baked into their image")
        for kind, expected in update_names(app_id, version).items():
            path = ("artifacts", f"update-{kind}")
            # load_build checks names too; never join one onto a path unchecked all the same.
            name = plain_name(_text(record, where, *path, "file"), Path(where), ".".join(path))
            if name != expected:
                raise ConfigError(f"names {name!r}; devices look for {expected!r}",
                                  file=where, field=".".join(path), hint="rebuild")
            entry = _entry(record, where, path, version, kind)
            if name in entries and entries[name] != entry:
                raise ConfigError(f"{sources[name].parent} and {directory} are two different "
                                  f"builds of version {version}", hint="give one build per "
                                  "version")
            entries[name], sources[name] = entry, directory / name
    assert first is not None  # release() refuses an empty list
    return _Builds(first[0], first[1], entries, sources)


def _target(out: Path) -> Path:
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


def _published(out: Path, new: _Builds, key: SigningKey, runner: Runner) -> dict[str, Entry]:
    """What OUT publishes now, with its signature checked; refuses what a release may not
    touch. The files themselves are re-hashed when staged."""
    if not out.exists():
        return {}
    present = sorted(os.listdir(out))
    if MANIFEST not in present:
        if not present:
            return {}
        raise ConfigError(f"no {MANIFEST} (an older appsdk's release, or not a release): "
                          f"holds {_listing(present)}", file=str(out),
                          hint="release every version you still want into a fresh directory "
                          "and point the server there; appsdk signs only files whose "
                          "build.json it has read")
    app_id, arch, files = _load_manifest(out / MANIFEST)
    if app_id != new.app_id:
        raise ConfigError(f"publishes {app_id!r}, not {new.app_id!r}", file=str(out),
                          hint="one release directory per appliance")
    if arch != new.arch:
        raise ConfigError(f"publishes the {arch} release; these builds are for {new.arch}",
                          file=str(out), hint=_ARCH_HINT)
    strays = [name for name in present if name not in {*files, MANIFEST, SUMS, SIGNATURE}]
    if strays:
        raise ConfigError(f"holds files no release vouches for: {_listing(strays)}",
                          file=str(out), hint="move them out of it: appsdk signs only files "
                          "whose build.json it has read, and never deletes what it did not "
                          "publish")
    _check_signed(out, files, key, runner)
    return files


def _listing(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _load_manifest(path: Path) -> tuple[str, str, dict[str, Entry]]:
    where = str(path)
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
        data = None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ConfigError(f"not a format-{_FORMAT} release manifest", file=where,
                          hint=f"made by another appsdk? use that one; if not, {_EDITED}")
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
        return _text(data, where, "id"), _text(data, where, "arch"), files
    except ConfigError as exc:  # whatever the field, the directory was edited
        raise ConfigError(exc.message, hint=_EDITED) from None


def _check_signed(out: Path, files: dict[str, Entry], key: SigningKey, runner: Runner) -> None:
    # The manifest decides what gets signed again, so it must itself be the signed one.
    sums, signature = out / SUMS, out / SIGNATURE
    if not sums.is_file() or not signature.is_file():
        raise VerifyFailed(f"{out} has {MANIFEST} but no signed {SUMS}", hint=_EDITED)
    try:
        keys.verify(key.public_keyring, sums, signature, runner)
    except VerifyFailed:
        raise VerifyFailed(f"{signature} does not verify with {key.public_keyring}",
                           hint="OUT was signed with another key or changed outside appsdk; "
                           "release into a fresh directory") from None
    listed = parse_sums(sums.read_text(errors="replace"), str(sums))
    expected = {**{n: e.sha256 for n, e in files.items()}, MANIFEST: sha256_file(out / MANIFEST)}
    if listed != expected:
        raise VerifyFailed(f"{out / MANIFEST} does not match the signed {SUMS}", hint=_EDITED)


def _merge(previous: dict[str, Entry], new: _Builds) -> dict[str, Entry]:
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


# --- staging and the switch ----------------------------------------------------------------

def _stage_and_switch(out: Path, previous: dict[str, Entry], new: _Builds,
                      files: dict[str, Entry], key: SigningKey, runner: Runner) -> None:
    if out.exists():
        mode = stat.S_IMODE(out.stat().st_mode)
    else:  # what mkdir would have made
        mode = 0o777 & ~os.umask(0o022)
        os.umask(0o777 & ~mode)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_STAGE}", dir=out.parent))
    try:
        for name, entry in files.items():
            if name in previous:
                _link_checked(out / name, stage / name, entry)
            elif (_copy(new.sources[name], stage / name, entry.size)
                  != (entry.sha256, entry.size)):
                raise VerifyFailed(f"{new.sources[name]} does not match its sha256 in "
                                   "build.json", hint="rebuild; the file was changed after "
                                   "the build")
        _write(stage / MANIFEST, _manifest(new, files))
        _write(stage / SUMS, format_sums({**{n: e.sha256 for n, e in files.items()},
                                          MANIFEST: sha256_file(stage / MANIFEST)}))
        _sign_checked(stage, key, runner)
        stage.chmod(mode)  # mkdtemp made it 0700; a web server must read it as it read OUT
        _sync(stage)
        _switch(stage, out)  # from here on, `stage` holds the old set (or nothing)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _manifest(new: _Builds, files: dict[str, Entry]) -> str:
    data = {"format": _FORMAT, "appsdk": __version__, "id": new.app_id, "arch": new.arch,
            "files": {name: asdict(entry) for name, entry in sorted(files.items())}}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _open_regular(source: Path) -> int:
    """A descriptor for `source` if it is a regular file itself: a build directory's name
    must not publish what a symlink points at (/etc/shadow), nor hang on a FIFO."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        raise ConfigError("is not a regular file (a symlink, FIFO, device or directory): "
                          "release copies only the files a build wrote", file=str(source),
                          hint="rebuild, or copy the build directory without symlinks")
    return fd


def _copy(source: Path, target: Path, size_limit: int) -> tuple[str, int]:
    """Copy, and return (sha256, size) of the bytes copied: what gets signed is what was
    checked, even if the source changes meanwhile. At most one byte more than `size_limit`
    is copied: enough to tell that the file is not the recorded one."""
    digest, size = hashlib.sha256(), 0
    with os.fdopen(_open_regular(source), "rb") as src, target.open("xb") as dst:
        while chunk := src.read(min(CHUNK, size_limit + 1 - size)):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest(), size


def _link_checked(published: Path, target: Path, entry: Entry) -> None:
    try:
        if not stat.S_ISREG(os.lstat(published).st_mode):
            raise VerifyFailed(f"{published} is no longer a regular file", hint=_EDITED)
    except FileNotFoundError:
        raise VerifyFailed(f"{published} is missing from the release", hint=_EDITED) from None
    try:
        os.link(published, target, follow_symlinks=False)
        found = sha256_file(target), target.stat().st_size
    except OSError:  # no hard links here (or not allowed): copy
        found = _copy(published, target, entry.size)
    if found != (entry.sha256, entry.size):
        raise VerifyFailed(f"{published} no longer matches the sha256 it was released with",
                           hint=_EDITED)


def _sign_checked(stage: Path, key: SigningKey, runner: Runner) -> None:
    signature = keys.sign(key, stage / SUMS, runner)
    try:
        keys.verify(key.public_keyring, stage / SUMS, signature, runner)
    except VerifyFailed:
        raise VerifyFailed(f"the new signature does not verify with {key.public_keyring}",
                           hint="that keyring is not the signing key's public key; export it "
                           "again (gpg --export) or use the right --keys directory") from None
    _sync(signature)


def _write(path: Path, text: str) -> None:
    with path.open("x") as f:
        f.write(text)
    _sync(path)


def _sync(path: Path) -> None:
    """fsync a file or directory: the switched-in set must survive a power cut whole."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two directories in one step."""
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not in this C library")
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _switch(stage: Path, out: Path) -> None:
    if not out.exists():
        os.rename(stage, out)  # a first release
    else:
        try:
            _exchange(stage, out)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            # This filesystem (or kernel) refuses EXCHANGE: two renames, with a moment in
            # which OUT is missing. A kill in between is undone by the next run.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_OLD}", dir=out.parent))
            os.rename(out, old)
            try:
                os.rename(stage, out)
            except OSError:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
    # The switch is done and visible; a failing fsync here must not report it as undone.
    with contextlib.suppress(OSError):
        _sync(out.parent)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    # The lock is on OUT's parent: OUT itself is swapped for another directory.
    fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another `appsdk release` is running in {out.parent}",
                             hint="wait for it to finish, then release again") from None
        yield
    finally:
        os.close(fd)


def _clean_leftovers(out: Path) -> None:
    """Remove what a killed run left beside OUT; never publish it. If a two-rename switch was
    cut between its renames (OUT missing), put the old set back first."""
    prefix = f".{out.name}."
    for entry in sorted(out.parent.iterdir()):
        tag = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
        if not tag.startswith((_STAGE, _OLD)) or entry.is_symlink() or not entry.is_dir():
            continue
        if tag.startswith(_OLD) and not os.path.lexists(out):
            os.rename(entry, out)
        else:
            shutil.rmtree(entry)


__all__ = ["MANIFEST", "Entry", "Release", "release"]
