"""`appsdk release`: a publishable update directory from one or more builds, as systemd-
sysupdate reads it (url-file source): the xz artifacts of every version side by side, one
SHA256SUMS over all of them, and its signature.

OUT is never edited in place: the new set is staged in a sibling directory, every file in it
checked (against build.json, or the sha256 it was published with), signed, the signature
verified, and only then swapped with OUT in one rename. appsdk-release.json records what
each published file is; nothing else is ever signed. docs/updates.md has the rules.
This module stages and switches; update/releaseset.py reads the builds and what OUT holds."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appsdk.contract.updatefiles import SUMS, format_sums
from appsdk.core.digest import CHUNK, sha256_file
from appsdk.core.errors import BuildError, ConfigError, VerifyFailed
from appsdk.core.runner import Runner
from appsdk.trust import keys
from appsdk.trust.keys import SigningKey
from appsdk.update.releaseset import (
    EDITED,
    MANIFEST,
    SIGNATURE,
    Builds,
    Entry,
    format_manifest,
    load_manifest,
    merge,
    read_builds,
    read_published,
    resolve_target,
)

_STAGE, _OLD = "appsdk-stage-", "appsdk-old-"  # sibling names: .OUT.<tag><random>
# The readers' names before the split: tests call rel._read_builds and rel._load_manifest.
_read_builds, _load_manifest = read_builds, load_manifest


@dataclass(frozen=True)
class Release:
    directory: Path
    versions: tuple[str, ...]  # the versions of the builds given
    files: tuple[str, ...]  # everything OUT now holds
    signature: Path
    arch: str = ""
    published: tuple[str, ...] = ()  # every version OUT now publishes


def release(out: Path, builds: list[Path], key: SigningKey,
            runner: Runner | None = None) -> Release:
    """Merge builds into the release directory `out`, signed with `key`, in one atomic
    switch: devices see the old release or the new one, never a mix."""
    runner = runner or Runner()
    if not builds:
        raise ConfigError("no builds given", hint="appsdk release OUT BUILD_DIR...")
    try:
        new = read_builds(builds, key)
        target = resolve_target(out)
        with _locked(target):
            _clean_leftovers(target)
            previous = read_published(target, new, key, runner)
            files = {**previous, **merge(previous, new)}
            _stage_and_switch(target, previous, new, files, key, runner)
    except OSError as exc:
        raise BuildError(f"release into {out} failed: {exc}",
                         hint=f"check space and permissions in {Path(out).parent}; "
                         "OUT is unchanged (a release is switched in only when complete)"
                         ) from None
    return Release(directory=out, versions=tuple(sorted({e.version for e in new.entries.values()})),
                   files=(*sorted(files), MANIFEST, SUMS, SIGNATURE), signature=out / SIGNATURE,
                   arch=new.arch, published=tuple(sorted({e.version for e in files.values()})))


# --- staging and the switch ----------------------------------------------------------------

def _stage_and_switch(out: Path, previous: dict[str, Entry], new: Builds,
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
        _write(stage / MANIFEST, format_manifest(new, files))
        _write(stage / SUMS, format_sums({**{n: e.sha256 for n, e in files.items()},
                                          MANIFEST: sha256_file(stage / MANIFEST)}))
        _sign_checked(stage, key, runner)
        stage.chmod(mode)  # mkdtemp made it 0700; a web server must read it as it read OUT
        _sync(stage)
        _switch(stage, out)  # from here on, `stage` holds the old set (or nothing)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
            raise VerifyFailed(f"{published} is no longer a regular file", hint=EDITED)
    except FileNotFoundError:
        raise VerifyFailed(f"{published} is missing from the release", hint=EDITED) from None
    try:
        os.link(published, target, follow_symlinks=False)
        found = sha256_file(target), target.stat().st_size
    except OSError:  # no hard links here (or not allowed): copy
        found = _copy(published, target, entry.size)
    if found != (entry.sha256, entry.size):
        raise VerifyFailed(f"{published} no longer matches the sha256 it was released with",
                           hint=EDITED)


def _sign_checked(stage: Path, key: SigningKey, runner: Runner) -> None:
    signature = keys.sign(key, stage / SUMS, runner)
    try:
        keys.verify(key.public_keyring, stage / SUMS, signature, runner)
    except VerifyFailed:
        raise VerifyFailed(f"the new signature does not verify with {key.public_keyring}",
                           hint="that keyring is not the signing key's public key; export it "
                           "again (gpg --export) or use the right key directory") from None
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
