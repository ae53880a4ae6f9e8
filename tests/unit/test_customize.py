"""Pieces of the customize stage that work on a plain directory tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appsdk.pipeline.stages.customize import drop_device_trees

V = "7.3.4+deb13-arm64"


def test_device_tree_directory_leaves_usr(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / f"usr/lib/linux-image-{V}/broadcom").mkdir(parents=True)
    drop_device_trees(tree, V)
    assert not (tree / f"usr/lib/linux-image-{V}").exists()
    drop_device_trees(tree, V)  # nothing there: nothing to do


@pytest.mark.parametrize("absolute", [False, True])
def test_linked_device_trees_are_resolved_inside_the_tree(tmp_path: Path,
                                                          absolute: bool) -> None:
    tree = tmp_path / "tree"
    dtb = tree / f"usr/lib/modules/{V}/dtb"
    (dtb / "broadcom").mkdir(parents=True)
    host = tmp_path / "usr/lib/modules" / V / "dtb"  # what an absolute link means outside
    host.mkdir(parents=True)
    link = tree / f"usr/lib/linux-image-{V}"
    os.symlink(f"/usr/lib/modules/{V}/dtb" if absolute else f"modules/{V}/dtb", link)
    drop_device_trees(tree, V)
    assert not link.is_symlink() and not dtb.exists()
    assert (tree / f"usr/lib/modules/{V}").is_dir() and host.is_dir()


# --- overlay containment: the copy never follows a link out, on either side --------------

import socket  # noqa: E402
import stat  # noqa: E402
from collections.abc import Callable  # noqa: E402

from appsdk.core.errors import AppsdkError, BuildError, ConfigError  # noqa: E402
from appsdk.pipeline.stages.customize import prune_modules  # noqa: E402
from appsdk.pipeline.treefs import (  # noqa: E402
    _TreeCopy,
    copy_overlay,
    read_in_tree,
    write_in_tree,
)
from appsdk.spec.appliance import load_appliance  # noqa: E402
from appsdk.spec.overlay import check_overlay  # noqa: E402


def _layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(overlay, tree, host): host stands for the build host's files outside the tree."""
    overlay, tree, host = tmp_path / "app/overlay", tmp_path / "tree", tmp_path / "host"
    for d in (overlay / "etc", overlay / "usr", tree / "etc", tree / "usr/lib", host):
        d.mkdir(parents=True)
    (host / "shadow").write_text("root:secret\n")
    (tmp_path / "app/appliance.yaml").write_text("id: ok\nversion: '1'\noverlay: overlay\n")
    return overlay, tree, host


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file()
                                       and not p.is_symlink() else b"")
            for p in sorted(root.rglob("*"))}


def _refused(overlay: Path, tree: Path, match: str) -> None:
    """Both load time (config) and copy time (customize) refuse, naming the overlay path."""
    with pytest.raises(ConfigError, match=match) as loaded:
        load_appliance(overlay.parent)
    with pytest.raises(ConfigError, match=match) as copied:
        copy_overlay(overlay, tree)
    for info in (loaded, copied):
        assert str(overlay) in str(info.value) and info.value.hint


def test_overlay_files_dirs_and_inner_links_are_copied(tmp_path: Path) -> None:
    overlay, tree, _ = _layout(tmp_path)
    (overlay / "etc/app").mkdir()
    (overlay / "etc/app/conf").write_text("x=1\n")
    (overlay / "etc/app/conf").chmod(0o640)
    os.symlink("/etc/shadow", overlay / "etc/app/abs")   # an image path: kept as a link
    os.symlink("conf", overlay / "etc/app/rel")
    os.link(overlay / "etc/app/conf", overlay / "etc/app/hard")
    load_appliance(overlay.parent)
    copy_overlay(overlay, tree)
    out = tree / "etc/app"
    assert (out / "conf").read_text() == "x=1\n"
    assert stat.S_IMODE((out / "conf").stat().st_mode) == 0o640
    assert os.readlink(out / "abs") == "/etc/shadow" and os.readlink(out / "rel") == "conf"
    assert (out / "hard").stat().st_ino == (out / "conf").stat().st_ino


@pytest.mark.parametrize("top", ["etc", "usr"])
def test_an_overlay_top_that_is_a_symlink_is_refused(tmp_path: Path, top: str) -> None:
    overlay, tree, host = _layout(tmp_path)
    (overlay / top).rmdir()
    os.symlink(host, overlay / top)
    before = _snapshot(tree)
    _refused(overlay, tree, "is a symlink")
    assert _snapshot(tree) == before


@pytest.mark.parametrize("make", [
    lambda p: os.mkfifo(p),
    lambda p: socket.socket(socket.AF_UNIX).bind(str(p)),
    pytest.param(lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3)),
                 marks=pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")),
], ids=["fifo", "socket", "device"])
def test_special_files_in_an_overlay_are_refused(tmp_path: Path,
                                                 make: Callable[[Path], None]) -> None:
    overlay, tree, _ = _layout(tmp_path)
    (overlay / "etc/deep").mkdir()
    make(overlay / "etc/deep/node")
    _refused(overlay, tree, "device node, fifo or socket")


def test_a_hard_link_to_a_file_outside_the_overlay_is_refused(tmp_path: Path) -> None:
    overlay, tree, host = _layout(tmp_path)
    os.link(host / "shadow", overlay / "etc/shadow")
    _refused(overlay, tree, "hard link to a file outside")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_overlay_file_is_refused(tmp_path: Path) -> None:
    overlay, tree, _ = _layout(tmp_path)
    (overlay / "etc/secret").write_text("x")
    (overlay / "etc/secret").chmod(0)
    _refused(overlay, tree, "not readable|cannot be read")


def test_an_unreadable_overlay_file_is_refused_even_as_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads everything, so pretend: the refusal must name the file, not crash."""
    overlay, tree, _ = _layout(tmp_path)
    (overlay / "etc/secret").write_text("x")
    real_access, real_open = os.access, os.open

    def access(path: object, mode: int, **kw: object) -> bool:
        return not str(path).endswith("secret") and real_access(path, mode)  # type: ignore[arg-type]

    def fake_open(path: object, flags: int, *args: object, **kw: object) -> int:
        if str(path) == "secret":
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "open", fake_open)
    _refused(overlay, tree, "not readable|cannot be read")


def test_a_file_over_an_absolute_link_of_the_tree_replaces_the_link(tmp_path: Path) -> None:
    overlay, tree, host = _layout(tmp_path)
    os.symlink(host / "shadow", tree / "etc/mtab")  # like etc/mtab -> /proc/self/mounts
    (overlay / "etc/mtab").write_text("mine\n")
    copy_overlay(overlay, tree)
    assert not (tree / "etc/mtab").is_symlink() and (tree / "etc/mtab").read_text() == "mine\n"
    assert (host / "shadow").read_text() == "root:secret\n"


def test_a_directory_over_a_link_of_the_tree_is_refused(tmp_path: Path) -> None:
    overlay, tree, host = _layout(tmp_path)
    os.symlink(host, tree / "etc/mtab")
    (overlay / "etc/mtab").mkdir()
    (overlay / "etc/mtab/x").write_text("x")
    with pytest.raises(ConfigError, match="through the image's symlink") as info:
        copy_overlay(overlay, tree)
    assert str(overlay / "etc/mtab") in str(info.value)
    assert sorted(p.name for p in host.iterdir()) == ["shadow"]


@pytest.mark.parametrize("kind", ["file", "link"])
def test_an_overlay_file_cannot_replace_a_directory_of_the_tree(tmp_path: Path,
                                                                 kind: str) -> None:
    overlay, tree, _ = _layout(tmp_path)
    (tree / "etc/ssh").mkdir()
    if kind == "file":
        (overlay / "etc/ssh").write_text("x")
    else:
        os.symlink("/nowhere", overlay / "etc/ssh")
    with pytest.raises(ConfigError, match="would replace the directory"):
        copy_overlay(overlay, tree)
    assert (tree / "etc/ssh").is_dir()


def test_appsdk_never_writes_through_a_link_the_overlay_left(tmp_path: Path) -> None:
    overlay, tree, host = _layout(tmp_path)
    (overlay / "usr/lib").mkdir()
    os.symlink(host, overlay / "usr/lib/appsdk")  # where appsdk writes its own files
    copy_overlay(overlay, tree)
    with pytest.raises(BuildError, match="symlink") as info:
        write_in_tree(tree / "usr", "lib/appsdk/appsdk-status", b"#!/bin/sh\n", 0o755)
    assert str(tree / "usr/lib/appsdk") in str(info.value) and info.value.hint
    assert sorted(p.name for p in host.iterdir()) == ["shadow"]
    os.symlink(host / "shadow", tree / "usr/lib/os-release")
    with pytest.raises(BuildError, match="os-release"):
        read_in_tree(tree / "usr", "lib/os-release")


def test_factory_copy_keeps_owners_links_and_never_writes_through_links(
        tmp_path: Path) -> None:
    _, tree, host = _layout(tmp_path)
    (tree / "etc/shadow").write_text("root:*:\n")
    (tree / "etc/shadow").chmod(0o640)
    os.symlink("/proc/self/mounts", tree / "etc/mtab")
    factory = tree / "usr/share/factory/etc"
    factory.mkdir(parents=True)
    os.symlink(host / "shadow", factory / "shadow")  # planted by an overlay
    if os.geteuid() == 0:
        os.chown(tree / "etc/shadow", 0, 42)
    _TreeCopy(overlay=False).run(tree / "etc", tree, "usr/share/factory/etc")
    assert (factory / "shadow").read_text() == "root:*:\n"
    assert os.readlink(factory / "mtab") == "/proc/self/mounts"
    assert (host / "shadow").read_text() == "root:secret\n"
    if os.geteuid() == 0:
        assert (factory / "shadow").stat().st_gid == 42


def test_prune_modules_does_not_delete_through_a_link(tmp_path: Path) -> None:
    from appsdk.core.runner import FakeRunner
    from appsdk.pipeline.tools import ToolsTree

    kernel = tmp_path / f"tree/usr/lib/modules/{V}/kernel"
    (kernel / "drivers").mkdir(parents=True)
    victim = tmp_path / "host/sound"
    victim.mkdir(parents=True)
    os.symlink(victim, kernel / "drivers/sound")
    with pytest.raises(BuildError, match="modules_exclude"):
        prune_modules(tmp_path / "tree", V, ("drivers/sound",), ToolsTree(tmp_path / "tools", "k"),
                      FakeRunner())
    assert victim.is_dir()


NAMES = ["etc", "mtab", "a", "b"]


def test_any_overlay_and_tree_never_write_outside(tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    """Random overlays over random trees with links out: the copy succeeds or refuses with an
    AppsdkError, never touches the host dir, and what it copied is in the tree."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    kinds = st.sampled_from(["file", "dir", "link-in", "link-out", "link-dangling"])
    paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
    layout = st.dictionaries(paths, kinds, max_size=6)

    def build(root: Path, spec: dict[str, str], host: Path) -> None:
        for rel, kind in sorted(spec.items()):
            path = root / rel
            if not os.path.realpath(path.parent).startswith(str(root)):
                continue  # the builder itself must not write through a link
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if kind == "file":
                    path.write_text(rel)
                elif kind == "dir":
                    path.mkdir()
                else:
                    target = {"link-in": "a", "link-out": str(host),
                              "link-dangling": "/nonexistent"}[kind]
                    os.symlink(target, path)
            except OSError:
                continue  # a parent is a file or a link: skip this entry

    @settings(max_examples=40, deadline=None)
    @given(layout, layout)
    def check(ov: dict[str, str], tr: dict[str, str]) -> None:
        base = tmp_path_factory.mktemp("case")
        overlay, tree, host = base / "overlay", base / "tree", base / "host"
        for d in (overlay / "etc", tree / "etc", host):
            d.mkdir(parents=True)
        (host / "keep").write_text("host")
        build(overlay / "etc", ov, host)
        build(tree / "etc", tr, host)
        check_overlay(overlay)  # only files, dirs and links: fine at load time
        try:
            copy_overlay(overlay, tree)
        except AppsdkError:
            pass
        else:
            for src in (overlay / "etc").rglob("*"):
                dst = tree / "etc" / src.relative_to(overlay / "etc")
                if src.is_symlink():
                    assert os.readlink(dst) == os.readlink(src)
                elif src.is_file():
                    assert dst.read_bytes() == src.read_bytes()
        assert sorted(p.name for p in host.iterdir()) == ["keep"]
        assert (host / "keep").read_text() == "host"

    check()
