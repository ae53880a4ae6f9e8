"""`appsdk init` makes a directory that loads, and never writes through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appsdk.cli import shown
from appsdk.core.errors import ConfigError
from appsdk.spec.appliance import load_appliance
from appsdk.spec.scaffold import init


def test_init_makes_an_appliance_that_loads(tmp_path: Path) -> None:
    config = init(tmp_path / "deep/my_app")
    assert config == tmp_path / "deep/my_app/appliance.yaml"
    app = load_appliance(tmp_path / "deep/my_app")
    assert (app.id, app.board) == ("my-app", "x86-uefi")
    assert (tmp_path / "deep/my_app/overlay/usr/lib/systemd/system").is_dir()
    assert (tmp_path / "deep/my_app/overlay/etc").is_dir()


def test_init_in_an_existing_empty_directory(tmp_path: Path) -> None:
    init(tmp_path, "ok")
    assert load_appliance(tmp_path).id == "ok"


def test_an_existing_config_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "appliance.yaml").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        init(tmp_path, "ok")
    assert (tmp_path / "appliance.yaml").read_text() == "mine"


def test_a_dangling_config_link_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere/appliance.yaml"
    target.parent.mkdir()
    app = tmp_path / "app"
    app.mkdir()
    os.symlink(target, app / "appliance.yaml")
    with pytest.raises(ConfigError, match="already exists") as info:
        init(app, "ok")
    assert str(app / "appliance.yaml") in str(info.value)
    assert not target.exists()


def test_an_overlay_link_out_is_not_written_through(tmp_path: Path) -> None:
    host = tmp_path / "host-etc"
    host.mkdir()
    app = tmp_path / "app"
    app.mkdir()
    os.symlink(host, app / "overlay")
    with pytest.raises(ConfigError, match="symlink or a file") as info:
        init(app, "ok")
    assert str(app / "overlay") in str(info.value) and info.value.hint
    assert list(host.iterdir()) == [] and not (app / "appliance.yaml").exists()


def test_a_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory") as info:
        init(tmp_path / "file", "ok")
    assert str(tmp_path / "file") in str(info.value)
    with pytest.raises(ConfigError, match="cannot") as info:
        init(tmp_path / "file/sub", "ok")
    assert info.value.hint


def test_a_directory_link_out_of_its_parent_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "shared").mkdir()
    os.symlink(outside, tmp_path / "shared/app")
    with pytest.raises(ConfigError, match="outside the directory it is in") as info:
        init(tmp_path / "shared/app", "ok")
    assert info.value.hint and str(outside) in info.value.hint
    assert list(outside.iterdir()) == []
    init(outside, "ok")  # the real path, given on purpose, is fine


def test_a_directory_link_beside_it_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "app")
    init(tmp_path / "app", "ok")
    assert (tmp_path / "real/appliance.yaml").is_file()


def test_a_dangling_directory_link_is_refused(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere", tmp_path / "app")
    with pytest.raises(ConfigError, match="not a directory"):
        init(tmp_path / "app", "ok")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("board", ["x\nservices: [evil]", "../x", "", "X86"])
def test_a_bad_board_name_is_refused(tmp_path: Path, board: str) -> None:
    with pytest.raises(ConfigError, match="board: ") as info:
        init(tmp_path, "ok", board)
    assert shown(info.value)[0].startswith("--board: ")
    assert not (tmp_path / "appliance.yaml").exists()


@pytest.mark.parametrize("app_id", ["Bad", "a_b", "-x", "x" * 40])
def test_a_bad_id_is_refused(tmp_path: Path, app_id: str) -> None:
    with pytest.raises(ConfigError, match="id: ") as info:
        init(tmp_path, app_id)
    assert shown(info.value)[0].startswith("--id: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot"):
            init(tmp_path / "app", "ok")
    finally:
        tmp_path.chmod(0o755)
