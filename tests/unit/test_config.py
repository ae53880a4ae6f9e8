from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.config import load_appliance
from appsdk.errors import ConfigError
from appsdk.units import MiB

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "appliance.yaml").write_text(text)
    return tmp_path


def test_example_hello_loads() -> None:
    app = load_appliance(REPO / "examples/hello")
    assert (app.id, app.version, app.board) == ("hello", "1.0", "x86-uefi")
    assert app.partitions.esp == 256 * MiB
    assert app.partitions.usr == 1024 * MiB
    assert app.services == ("hello.service", "systemd-networkd.service")
    assert app.overlay == (REPO / "examples/hello/overlay").resolve()
    assert app.health[0].url == "http://127.0.0.1:8080/health"


def test_defaults(tmp_path: Path) -> None:
    app = load_appliance(write(tmp_path, "id: x\nversion: '1'\n"))
    assert app.base.suite == "trixie"
    assert app.partitions.var_min == 2048 * MiB
    assert app.console.autologin is False
    assert app.version == "1"
    assert app.boot.tries == 3 and app.firmware is None


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("id: Bad_Id\nversion: '1'\n", 1, "id", "not a valid id"),
        ("id: ok\nversion: '1_0'\n", 2, "version", "not a valid version"),
        ("id: ok\nversion: '1+2'\n", 2, "version", "not a valid version"),
        ("id: ok\nversion: '1'\npartitions:\n  usr: 12Q\n", 4, "partitions.usr", "size"),
        ("id: ok\nversion: '1'\npartitions:\n  esp: 1M\n", 4, "partitions.esp", ">= 64M"),
        ("id: ok\nversion: '1'\nbase:\n  packages: [ok, 'BAD PKG']\n", 4, "base.packages[1]",
         "package"),
        ("id: ok\nversion: '1'\nbase:\n  pakages: []\n", 4, "base.pakages", "unknown field"),
        ("id: ok\nversion: '1'\nconsole:\n  autologin: 'yes'\n", 4, "console.autologin",
         "true or false"),
        ("id: ok\nversion: '1'\nhealth:\n  - name: a\n    url: x\n    unit: y\n", 4, "health[0]",
         "exactly one"),
        ("id: ok\nversion: '1'\nupdate:\n  url: ftp://x\n", 4, "update.url", "http"),
        ("version: '1'\n", 1, "id", "required"),
        ("id: ok\nversion: '1'\nschema: 2\n", 3, "schema", "not supported"),
        ("id: ok\nversion: '1'\nservices: [hello]\n", 3, "services[0]", "unit name"),
        ("id: ok\nversion: '1'\nboot:\n  tries: 0\n", 4, "boot.tries", "at least 1"),
        ("id: ok\nversion: '1'\nboot:\n  tries: 12\n", 4, "boot.tries", "at most 9"),
        ("id: ok\nversion: '1'\nfirmware: 'UEFI please'\n", 3, "firmware", "firmware chain"),
    ],
)
def test_bad_files_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_appliance(write(tmp_path, text))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'appliance.yaml'}:{line}: {field}:"), message
    assert words in message


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"appliance.yaml:3: not valid YAML"):
        load_appliance(write(tmp_path, "id: ok\nversion: '1'\n\tbase: x\n"))


def test_unquoted_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":2: version: must be a quoted string") as info:
        load_appliance(write(tmp_path, "id: ok\nversion: 1.10\n"))
    assert info.value.hint and '"1.10"' in info.value.hint


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_appliance(tmp_path)


def test_overlay_outside_usr_and_etc_is_refused(tmp_path: Path) -> None:
    (tmp_path / "overlay/var/lib").mkdir(parents=True)
    with pytest.raises(ConfigError, match="would be lost") as info:
        load_appliance(write(tmp_path, "id: ok\nversion: '1'\noverlay: overlay\n"))
    assert info.value.hint and "usr/" in info.value.hint


def test_missing_overlay_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":3: overlay: directory .* does not exist"):
        load_appliance(write(tmp_path, "id: ok\nversion: '1'\noverlay: nope\n"))


def test_version_override_is_validated(tmp_path: Path) -> None:
    app = load_appliance(write(tmp_path, "id: ok\nversion: '1'\n"))
    assert app.with_version("2.0~rc1").version == "2.0~rc1"
    with pytest.raises(ConfigError, match="--version"):
        app.with_version("2_0")
