"""Pieces of the customize stage that work on a plain directory tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appsdk.stages.customize import drop_device_trees

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
