"""Safe operations on an image tree being built: make directories, write, link and read
files, and copy a directory (the overlay, /etc) into it, below directory fds and never through
a symlink, so nothing in the tree can make a build write or read outside it."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appsdk.core.errors import AppsdkError, BuildError, ConfigError

# The Debian tree holds absolute links (etc/mtab -> /proc/self/mounts) and an overlay can add
# more: followed on the build host they lead out of the tree. So every path below the tree is
# opened one component at a time below a directory fd, never through a symlink, and files are
# made afresh (O_EXCL) instead of written through what is there.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 64
_UNREADABLE = "make it readable by the user running appsdk, or remove it from the overlay"


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _why(exc: OSError, dir_fd: int, name: str) -> str:
    # O_DIRECTORY|O_NOFOLLOW on a link to a directory fails with ENOTDIR, not ELOOP.
    st = _lstat(dir_fd, name)
    return "it is a symlink" if st and stat.S_ISLNK(st.st_mode) else str(exc.strerror)


def open_tree_dir(root: Path, rel: str, create: bool = True) -> int:
    """fd of the directory root/rel, making missing parts (0755) if `create`; BuildError
    where a symlink or a file stands in the way. The caller closes the fd."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    path = root
    for part in [p for p in rel.split("/") if p]:
        path = path / part
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, _DIR, dir_fd=fd)
        except OSError as exc:
            why = _why(exc, fd, part)
            os.close(fd)
            raise BuildError(f"{path}: cannot open this directory of the image: {why}; "
                             "appsdk does not write through links",
                             hint="the overlay must not put a link or a file where appsdk "
                             "writes its own files: remove it from the overlay") from None
        os.close(fd)
        fd = child
    return fd


def _clear(dir_fd: int, name: str, refuse: Callable[[], AppsdkError]) -> None:
    """Remove a non-directory at `name` so that what comes next is made, not written into."""
    st = _lstat(dir_fd, name)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise refuse()
    if st is not None:
        os.unlink(name, dir_fd=dir_fd)


def _in_the_way(where: Path) -> Callable[[], AppsdkError]:
    return lambda: BuildError(f"{where}: is a directory where appsdk writes a file",
                              hint="remove that directory from the overlay")


def write_in_tree(root: Path, rel: str, data: bytes, mode: int) -> None:
    parent, _, name = rel.rpartition("/")
    fd = open_tree_dir(root, parent)
    try:
        _clear(fd, name, _in_the_way(root / rel))
        with os.fdopen(os.open(name, _NEW, 0o600, dir_fd=fd), "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), mode)
    finally:
        os.close(fd)


def symlink_in_tree(root: Path, rel: str, target: str) -> None:
    parent, _, name = rel.rpartition("/")
    fd = open_tree_dir(root, parent)
    try:
        _clear(fd, name, _in_the_way(root / rel))
        os.symlink(target, name, dir_fd=fd)
    finally:
        os.close(fd)


def read_in_tree(root: Path, rel: str) -> str:
    parent, _, name = rel.rpartition("/")
    fd = open_tree_dir(root, parent, create=False)
    try:
        with os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=fd), "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as exc:
        raise BuildError(f"{root / rel}: cannot read it in the image: {exc.strerror}",
                         hint="it must be a regular file of the base tree (not a link from "
                         "the overlay)") from None
    finally:
        os.close(fd)


def copy_overlay(overlay: Path, tree: Path) -> None:
    """overlay/usr and overlay/etc into the tree, as `cp -a --no-preserve=ownership` would,
    but never through a link on either side. Refuses what spec.overlay.check_overlay
    refuses, again here, because the overlay can change between loading and copying."""
    copy = _TreeCopy(overlay=True)
    for top in ("usr", "etc"):
        if os.path.lexists(overlay / top):
            copy.run(overlay / top, tree, top)
    copy.check_links()


def copy_into_tree(src: Path, root: Path, rel: str) -> None:
    """Like `cp -a SRC/. ROOT/REL` (owners kept), without following links on either side."""
    _TreeCopy(overlay=False).run(src, root, rel)


@dataclass
class _TreeCopy:
    """Copies a directory's contents into a directory of the tree below directory fds.
    Symlinks are copied as links (they are paths of the image), existing directories are
    merged (their mode kept), other existing entries replaced. Hard links within one run are
    kept. overlay=True: files get the builder as owner, and hard links to files outside the
    overlay are refused (their other names may be host secrets); else owners are kept."""

    overlay: bool
    names: dict[tuple[int, int], int] = field(default_factory=dict)  # inode -> names copied
    linked: dict[tuple[int, int], tuple[int, str]] = field(default_factory=dict)
    first: dict[tuple[int, int], str] = field(default_factory=dict)  # inode -> first copy
    src: Path = Path()
    dst: Path = Path()
    top: int = -1

    def run(self, src: Path, root: Path, rel: str) -> None:
        self.src, self.dst, self.first = src, root / rel, {}
        try:
            src_fd = os.open(src, _DIR)
        except OSError as exc:
            raise self._refuse("", "is a symlink: the image would get what it points to on the "
                               "build host" if src.is_symlink() else
                               f"cannot be opened as a directory: {exc.strerror}",
                               f"make {src.name}/ a real directory") from None
        try:
            self.top = open_tree_dir(root, rel)
            try:
                self._dir(src_fd, self.top, "", 1)
            finally:
                os.close(self.top)
        finally:
            os.close(src_fd)

    def check_links(self) -> None:
        for inode, (nlink, rel) in self.linked.items():
            if self.names[inode] < nlink:
                raise self._refuse(rel, "is a hard link to a file outside the overlay",
                                   "copy the file into the overlay instead of linking it")

    def _refuse(self, rel: str, why: str, hint: str) -> AppsdkError:
        path = self.src / rel if rel else self.src
        if self.overlay:
            return ConfigError(f"overlay entry {why}", file=str(path), hint=hint)
        return BuildError(f"{path}: {why}", hint=hint)

    def _dir(self, src_fd: int, dst_fd: int, rel: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise self._refuse(rel, f"is nested too deep (more than {_MAX_DEPTH} levels)",
                               "flatten the overlay")
        for name in sorted(os.listdir(src_fd)):
            child = f"{rel}/{name}" if rel else name
            st = _lstat(src_fd, name)
            if st is None:
                raise self._refuse(child, "vanished while it was copied", "copy again")
            if stat.S_ISLNK(st.st_mode):
                self._link(src_fd, dst_fd, name, child, st)
            elif stat.S_ISDIR(st.st_mode):
                self._subdir(src_fd, dst_fd, name, child, depth)
            elif stat.S_ISREG(st.st_mode):
                self._file(src_fd, dst_fd, name, child)
            else:
                raise self._special(child)

    def _special(self, rel: str) -> AppsdkError:
        return self._refuse(rel, "is a device node, fifo or socket: an image holds only "
                            "files, directories and symlinks", "remove it from the overlay")

    def _link(self, src_fd: int, dst_fd: int, name: str, rel: str, st: os.stat_result) -> None:
        target = os.readlink(name, dir_fd=src_fd)
        self._clear(dst_fd, name, rel)
        os.symlink(target, name, dir_fd=dst_fd)
        if not self.overlay:
            with contextlib.suppress(PermissionError):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_fd, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_fd,
                 follow_symlinks=False)

    def _clear(self, dst_fd: int, name: str, rel: str) -> None:
        _clear(dst_fd, name, lambda: self._refuse(
            rel, f"would replace the directory {self.dst / rel} of the image with a file or "
            "link", "make it a directory, or remove it"))

    def _subdir(self, src_fd: int, dst_fd: int, name: str, rel: str, depth: int) -> None:
        try:
            sub_src = os.open(name, _DIR, dir_fd=src_fd)
        except OSError as exc:
            raise self._refuse(rel, f"cannot be read: {_why(exc, src_fd, name)}",
                               _UNREADABLE) from None
        try:
            existing = _lstat(dst_fd, name)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                raise self._through(dst_fd, name, rel, existing)
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=dst_fd)
            sub_dst = os.open(name, _DIR, dir_fd=dst_fd)
            try:
                self._dir(sub_src, sub_dst, rel, depth + 1)
                if existing is None:
                    self._attrs(sub_src, sub_dst, os.fstat(sub_src))
            finally:
                os.close(sub_dst)
        finally:
            os.close(sub_src)

    def _through(self, dst_fd: int, name: str, rel: str, st: os.stat_result) -> AppsdkError:
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dst_fd)
            return self._refuse(rel, f"would be copied through the image's symlink "
                                f"{self.dst / rel} -> {target}",
                                "put these files where the link points, as a path of the image")
        return self._refuse(rel, f"is a directory where the image has the file {self.dst / rel}",
                            "make it a file, or remove it from the overlay")

    def _file(self, src_fd: int, dst_fd: int, name: str, rel: str) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=src_fd)
        except OSError as exc:
            raise self._refuse(rel, f"cannot be read: {exc.strerror}", _UNREADABLE) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped since it was listed
                raise self._special(rel)
            self._clear(dst_fd, name, rel)
            if st.st_nlink > 1 and self._hard_link(st, dst_fd, name, rel):
                return
            with os.fdopen(os.open(name, _NEW, 0o600, dir_fd=dst_fd), "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                self._attrs(fd, out.fileno(), st)

    def _hard_link(self, st: os.stat_result, dst_fd: int, name: str, rel: str) -> bool:
        """Count the name; link it to its first copy if there is one (then True)."""
        inode = (st.st_dev, st.st_ino)
        self.names[inode] = self.names.get(inode, 0) + 1
        self.linked[inode] = (st.st_nlink, rel)
        first = self.first.get(inode)
        if first is None:
            self.first[inode] = rel
            return False
        os.link(first, name, src_dir_fd=self.top, dst_dir_fd=dst_fd, follow_symlinks=False)
        return True

    def _attrs(self, src_fd: int, dst_fd: int, st: os.stat_result) -> None:
        if not self.overlay:
            with contextlib.suppress(PermissionError):
                os.fchown(dst_fd, st.st_uid, st.st_gid)
        with contextlib.suppress(OSError):  # xattrs where both filesystems have them (cp -a)
            for key in os.listxattr(src_fd):
                with contextlib.suppress(OSError):
                    os.setxattr(dst_fd, key, os.getxattr(src_fd, key))
        os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))  # after chown, which drops setuid
        os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
