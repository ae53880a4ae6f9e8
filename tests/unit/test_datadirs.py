"""Where board profiles and firmware manifests are found: $APPSDK_BOARDS_PATH, then
~/.config/appsdk/boards, then the checkout's boards/ (or the copy in the package); the
first file of a name wins. pyproject.toml ships boards/ and firmware/ in the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.core import datadirs
from appsdk.core.errors import AppsdkError, ConfigError
from appsdk.spec.boards import board_files, list_boards, load_board
from appsdk.spec.firmware import load_manifests, manifest_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No lookup variables, and a config home of our own (never the developer's)."""
    for env in (*datadirs.BOARDS.envs, *datadirs.FIRMWARE.envs):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def board(directory: Path, name: str, description: str = "") -> Path:
    """A valid profile NAME in `directory`: x86-uefi's, renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (REPO / "boards/x86-uefi.yaml").read_text()
    text = text.replace("name: x86-uefi", f"name: {name}")
    text = text.replace("description: ", f"description: {description}", 1)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def test_a_checkout_uses_its_own_boards_and_firmware() -> None:
    assert datadirs.checkout_root() == REPO
    assert datadirs.search_path(datadirs.BOARDS) == [REPO / "boards"]
    assert datadirs.search_path(datadirs.FIRMWARE) == [REPO / "firmware"]
    assert {b.source for b in list_boards()} == set((REPO / "boards").glob("*.yaml"))


def test_lookup_order_env_then_user_then_shipped(tmp_path: Path, clean_env: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, user = tmp_path / "first", tmp_path / "second", clean_env / "appsdk/boards"
    board(first, "x86-uefi", "FIRST ")
    board(second, "x86-uefi", "SECOND ")
    board(second, "team")
    board(user, "team", "USER ")
    board(user, "mine")
    monkeypatch.setenv("APPSDK_BOARDS_PATH", f"{first}::{second}:")
    assert datadirs.search_path(datadirs.BOARDS) == [first, second, user, REPO / "boards"]
    files = board_files()
    assert files["x86-uefi"] == first / "x86-uefi.yaml"
    assert files["team"] == second / "team.yaml"
    assert files["mine"] == user / "mine.yaml"
    assert files["rpi4"] == REPO / "boards/rpi4.yaml"
    assert list(files) == sorted(files)
    assert load_board("x86-uefi").description.startswith("FIRST")
    assert {b.name: b.source for b in list_boards()} == files


def test_the_old_single_directory_variable_still_adds_boards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board(tmp_path / "old", "legacy")
    monkeypatch.setenv("APPSDK_BOARDS_DIR", str(tmp_path / "old"))
    assert load_board("legacy").source == tmp_path / "old/legacy.yaml"
    assert load_board("rpi5").source == REPO / "boards/rpi5.yaml"


def test_an_explicit_directory_is_used_alone(tmp_path: Path) -> None:
    board(tmp_path, "only")
    assert [b.name for b in list_boards(tmp_path)] == ["only"]
    with pytest.raises(ConfigError, match="unknown board 'x86-uefi'"):
        load_board("x86-uefi", tmp_path)


def test_unknown_board_lists_every_known_one_and_where_to_add(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    board(tmp_path / "team", "team")
    monkeypatch.setenv("APPSDK_BOARDS_PATH", str(tmp_path / "team"))
    with pytest.raises(ConfigError, match=r"board: unknown board 'rpi3'") as info:
        load_board("rpi3")
    assert info.value.exit_code == 2
    assert info.value.hint and "rpi4, rpi5, team, x86-uefi" in info.value.hint
    assert str(clean_env / "appsdk/boards") in info.value.hint
    assert "APPSDK_BOARDS_PATH" in info.value.hint


@pytest.mark.parametrize("entry", ["missing", "file.yaml"])
def test_a_path_entry_that_is_no_directory_is_named(
        entry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file.yaml").write_text("x")
    monkeypatch.setenv("APPSDK_BOARDS_PATH", str(tmp_path / entry))
    with pytest.raises(ConfigError, match=f"APPSDK_BOARDS_PATH: {tmp_path / entry} is not a "
                       "directory") as info:
        list_boards()
    assert info.value.hint == "create it, or remove it from APPSDK_BOARDS_PATH"


def test_an_overlong_path_entry_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPSDK_BOARDS_PATH", "a" * 5000)
    with pytest.raises(ConfigError, match=r"cannot be read \(File name too long\)") as info:
        list_boards()
    assert len(str(info.value)) < 300


def test_a_missing_user_directory_is_no_error(clean_env: Path) -> None:
    assert not clean_env.exists()
    assert "x86-uefi" in board_files()


def test_no_home_means_no_user_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert datadirs.search_path(datadirs.BOARDS) == [REPO / "boards"]
    with pytest.raises(ConfigError) as info:
        load_board("rpi3")
    assert info.value.hint and "~/.config/appsdk/boards" in info.value.hint


def test_firmware_path_shadows_and_user_config_is_not_searched(
        tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = (REPO / "firmware/u-boot-rpi.yaml").read_text()
    (clean_env / "appsdk/firmware").mkdir(parents=True)
    (clean_env / "appsdk/firmware/u-boot-rpi.yaml").write_text(shipped)
    assert manifest_files()["u-boot-rpi"] == REPO / "firmware/u-boot-rpi.yaml"
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw/u-boot-rpi.yaml").write_text(shipped.replace("version: ", "version: 9", 1))
    monkeypatch.setenv("APPSDK_FIRMWARE_PATH", str(tmp_path / "fw"))
    manifests = load_manifests()
    assert manifests["u-boot-rpi"].source == tmp_path / "fw/u-boot-rpi.yaml"
    assert manifests["u-boot-rpi"].version.startswith("9")
    assert manifests["raspi-firmware"].source == REPO / "firmware/raspi-firmware.yaml"


def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pretend appsdk is installed in site-packages (no checkout around it)."""
    package = tmp_path / "venv/lib/python3.11/site-packages/appsdk"
    package.mkdir(parents=True)
    monkeypatch.setattr(datadirs, "PACKAGE", package)
    return package


def test_an_installed_package_uses_its_shipped_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = installed(tmp_path, monkeypatch)
    board(package / "data/boards", "shipped")
    assert datadirs.checkout_root() is None
    assert list(board_files()) == ["shipped"]


def test_an_installation_without_its_data_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = installed(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="no boards/ directory found") as info:
        list_boards()
    assert str(package / "data/boards") in str(info.value)
    assert info.value.hint and "reinstall" in info.value.hint
    with pytest.raises(ConfigError, match="no firmware/ directory found"):
        load_manifests()


def test_a_directory_named_sdk_without_pyproject_is_no_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "sdk/appsdk"
    package.mkdir(parents=True)
    (tmp_path / "boards").mkdir()
    monkeypatch.setattr(datadirs, "PACKAGE", package)
    assert datadirs.checkout_root() is None


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               max_size=300))
def test_any_boards_path_gives_boards_or_a_config_error(value: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APPSDK_BOARDS_PATH", value)
        try:
            files = board_files()
        except AppsdkError as exc:
            assert isinstance(exc, ConfigError) and exc.hint
        else:
            assert {"x86-uefi", "rpi4", "rpi5"} <= set(files)


def test_pyproject_ships_every_package_and_the_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {".".join(p.parent.relative_to(REPO / "sdk").parts)
                   for p in (REPO / "sdk/appsdk").rglob("__init__.py")}
    assert subpackages <= set(config["packages"])
    assert config["package-dir"]["appsdk.data.boards"] == "boards"
    assert config["package-dir"]["appsdk.data.firmware"] == "firmware"
    for name in ("appsdk.data.boards", "appsdk.data.firmware"):
        assert name in config["packages"] and config["package-data"][name] == ["*.yaml"]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith("cryptography") for d in deps)
