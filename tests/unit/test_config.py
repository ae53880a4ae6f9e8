from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.cli import shown
from appsdk.core.errors import ConfigError
from appsdk.core.units import MiB
from appsdk.spec.appliance import load_appliance

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
    assert app.update.compression == "xz"
    gz = load_appliance(write(tmp_path, "id: x\nversion: '1'\nupdate:\n  compression: gzip\n"))
    assert gz.update.compression == "gzip"


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
        ("id: ok\nversion: '1'\nupdate:\n  compression: zstd\n", 4, "update.compression",
         "'zstd' is not a compression (xz, gzip)"),
        ("version: '1'\n", 1, "id", "required"),
        ("id: ok\nversion: '1'\nschema: 2\n", 3, "schema", "not supported"),
        ("id: ok\nversion: '1'\nservices: [hello]\n", 3, "services[0]", "unit name"),
        ("id: ok\nversion: '1'\nboot:\n  tries: 0\n", 4, "boot.tries", "at least 1"),
        ("id: ok\nversion: '1'\nboot:\n  tries: 12\n", 4, "boot.tries", "at most 9"),
        ("id: ok\nversion: '1'\nfirmware: 'UEFI please'\n", 3, "firmware", "firmware chain"),
        ("id: ok\nversion: '1'\nvar:\n  encrypt: luks\n", 4, "var.encrypt",
         "'luks' is not an encryption of /var (none, tpm2)"),
        ("id: ok\nversion: '1'\nvar:\n  without_tpm: warn\n", 4, "var.without_tpm",
         "(refuse, plain)"),
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


def test_unquoted_version_keeps_what_was_written(tmp_path: Path) -> None:
    # YAML 1.1 reads 1.10 as the float 1.1; appsdk keeps the text the user wrote.
    assert load_appliance(write(tmp_path, "id: ok\nversion: 1.10\n")).version == "1.10"
    assert load_appliance(write(tmp_path, "id: ok\nversion: 2\n")).version == "2"


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
    with pytest.raises(ConfigError, match="version: ") as info:
        app.with_version("2_0")
    assert shown(info.value)[0].startswith("--version: ")


# Issue 12, class 6: nothing is accepted or changed silently.
@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("id: ok\nversion: '1'\npartitions:\n  usr: 100T\n", 4, "partitions.usr",
         "100T is more than 64G"),
        ("id: ok\nversion: '1'\npartitions:\n  esp: 5G\n", 4, "partitions.esp",
         "more than 4G"),
        ("id: ok\nversion: '1'\npartitions:\n  var_min: 2T\n", 4, "partitions.var_min",
         "more than 1T"),
        ("id: ok\nversion: '1'\npartitions:\n  usr: -5\n", 4, "partitions.usr", "negative"),
        ("id: ok\nversion: '1'\nhealth:\n  - {name: a, unit: a.service}\n"
         "  - {name: a, unit: b.service}\n", 5, "health[1].name", "also the name of health[0]"),
        ("id: ok\nversion: '1'\nhealth:\n  - {unit: a.service}\n  - {name: check0, unit: "
         "b.service}\n", 5, "health[1].name", "also the name"),
        ("id: ok\nversion: '1'\nhealth:\n  - name: a\n    command: \"true\\nreboot\"\n", 5,
         "health[0].command", "newline"),
        ("id: ok\nversion: '1'\nhealth:\n  - name: a\n    url: https://127.0.0.1/\n", 5,
         "health[0].url", "speaks plain HTTP"),
        ("id: ok\nversion: '1'\nhealth:\n  - name: a\n    unit: 'x; reboot'\n", 5,
         "health[0].unit", "unit name"),
        ("id: ok\nversion: '1'\nboard: ../../x\n", 3, "board", "not a path"),
        ("id: ok\nversion: '1'\nupdate:\n  url: \"http://x/\\n\"\n", 4, "update.url",
         "newline"),
        ("id: ok\nversion: '1'\nupdate:\n  url: http://x/?a=b\n", 4, "update.url", "?query"),
        ("id: ok\nversion: '1'\nbase:\n  mirror: \"http://x/ trixie main\"\n", 4,
         "base.mirror", "space"),
        ("id: ok\nversion: '1'\nbase:\n  components: ['main contrib']\n", 4,
         "base.components[0]", "component"),
        ("id: ok\nversion: '1'\nname: 'a \"b\"'\n", 3, "name", "must not contain"),
        ("id: ok\nversion: '1'\nname: \"x\\0y\"\n", 3, "name", "NUL"),
        ("id: ok\nversion: '1'\nconsole:\n  autologin: yes\n", 4, "console.autologin",
         "true or false, got 'yes'"),
        ("id: 0123\nversion: '1'\nboot:\n  tries: 0x3\n", 4, "boot.tries",
         "whole number, got '0x3'"),
        ("id: ok\nversion: '1'\nid: other\n", 3, "", "duplicate key 'id' (also on line 1)"),
    ],
)
def test_nothing_passes_or_changes_silently(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_appliance(write(tmp_path, text))
    message = str(info.value)
    where = f"{tmp_path / 'appliance.yaml'}:{line}: " + (f"{field}:" if field else "")
    assert message.startswith(where), message
    assert words in message, message


def test_yaml_11_numbers_stay_as_written(tmp_path: Path) -> None:
    app = load_appliance(write(tmp_path, "id: 0123\nversion: 0o17\n"))
    assert (app.id, app.version) == ("0123", "0o17")  # YAML 1.1: 83 and 15


def test_https_health_url_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_appliance(write(tmp_path, "id: ok\nversion: '1'\nhealth:\n  - name: a\n"
                             "    url: https://127.0.0.1:8443/health\n"))
    assert info.value.hint and "command:" in info.value.hint


def test_update_key_inside_the_overlay_is_refused(tmp_path: Path) -> None:
    (tmp_path / "overlay/etc/keys").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r":5: update.key: .* is inside the overlay") as info:
        load_appliance(write(tmp_path, "id: ok\nversion: '1'\noverlay: overlay\nupdate:\n"
                             "  key: overlay/etc/keys\n"))
    assert "copied into the image" in str(info.value) and info.value.hint
    app = load_appliance(write(tmp_path, "id: ok\nversion: '1'\noverlay: overlay\nupdate:\n"
                               "  key: keys\n"))
    assert app.update.key == (tmp_path / "keys").resolve()


def test_sizes_and_limits_in_range_are_kept(tmp_path: Path) -> None:
    app = load_appliance(write(tmp_path, "id: ok\nversion: '1'\npartitions:\n  esp: 4G\n"
                               "  usr: 64G\n  var_min: 1T\n"))
    assert (app.partitions.esp, app.partitions.usr, app.partitions.var_min) == (
        4096 * MiB, 65536 * MiB, 1024 * 1024 * MiB)


@pytest.mark.parametrize("overrides, words", [
    ({"update_url": "ftp://x/"}, "update_url: 'ftp://x/' is not an http:// or https://"),
    ({"update_url": "http://x/\n"}, "update_url: contains a newline"),
    ({"update_url": ""}, "update_url: must not be empty"),
    ({"version": "1_0"}, "version: '1_0' is not a valid version"),
    ({"version": ""}, "version: must not be empty"),
])
def test_python_api_overrides_are_checked_before_any_work(
    tmp_path: Path, overrides: dict[str, str], words: str
) -> None:
    from appsdk.pipeline.builder import build

    write(tmp_path, "id: ok\nversion: '1'\n")
    with pytest.raises(ConfigError) as info:
        build(tmp_path, output=tmp_path / "out", **overrides)
    assert str(info.value).startswith(words)
    # The command line shows the argument as its flag.
    argument, rest = words.split(": ", 1)
    assert shown(info.value)[0].startswith(f"--{argument.replace('_', '-')}: {rest}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overlay", ["x" * 300, "loop"])
def test_an_overlay_path_that_cannot_be_resolved_is_a_config_error(tmp_path: Path,
                                                                   overlay: str) -> None:
    (tmp_path / "loop").symlink_to("loop")  # a symlink to itself
    with pytest.raises(ConfigError, match=r":3: overlay: "):
        load_appliance(write(tmp_path, f"id: ok\nversion: '1'\noverlay: {overlay}\n"))
