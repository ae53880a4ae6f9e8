"""The field validators shared by appliance.yaml, plans, CLI flags and the Python API:
any input gives a value or a FieldError naming the field, and a value validates to itself."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.core.errors import ConfigError
from appsdk.core.units import GiB, MiB, TiB, format_size, parse_size
from appsdk.spec import fields
from appsdk.spec.fields import FieldError

TEXT_VALIDATORS: list[Callable[[object, str], Any]] = [
    fields.app_id, fields.version, fields.display_name, fields.board_name, fields.hostname,
    fields.update_url, fields.mirror_url, fields.health_url, fields.credential_name,
    fields.serial, fields.device_path, fields.file_mode, fields.check_name,
    fields.health_command, fields.unit_name, fields.user_name, fields.password,
]

# Text that looks like the real thing often enough to reach the deeper checks (prefixes of
# valid values plus characters that matter), and anything else.
PREFIXES = ["", "http://", "https://", "ftp://", "HTTP://", "file:/", "http://h.example:80/",
            "http://[::1]", "http://u@h/", "/", "/var/lib/", "0", "0o", "a", "x.service", "-"]
ALPHABET = "aZ09.-_:/[]@?#%~+^ \n\t\x00\u00e9|&$\"'\\"
LOOKALIKE = st.builds(lambda head, tail: head + tail, st.sampled_from(PREFIXES),
                      st.text(alphabet=ALPHABET, max_size=30))
ANY_VALUE = st.one_of(LOOKALIKE, st.text(max_size=40), st.integers(), st.booleans(),
                      st.none(), st.lists(st.integers(), max_size=2))


@pytest.mark.parametrize("validator", TEXT_VALIDATORS, ids=lambda v: v.__name__)
@settings(max_examples=150, deadline=None)
@given(value=ANY_VALUE)
def test_any_input_gives_a_value_or_a_field_error(validator: Callable[[object, str], Any],
                                                  value: object) -> None:
    try:
        out = validator(value, "the.field")
    except FieldError as exc:
        assert str(exc).startswith("the.field: ") and exc.reason
        return
    assert validator(out, "the.field") == out  # idempotent


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(
    st.text(max_size=30), st.integers(), st.booleans(), st.none(),
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(min_value=-5, max_value=2**70),
              st.sampled_from(["", "K", "M", "G", "T", "MiB", "gb", " M", "X"]))))
def test_sizes_parse_or_refuse_and_round_trip(value: object) -> None:
    for key, limits in fields.SIZE_LIMITS.items():
        try:
            number = fields.size(value, key, limits)
        except FieldError:
            continue
        assert limits[0] <= number <= limits[1] and number % MiB == 0
        assert parse_size(format_size(number)) == number
        assert fields.size(format_size(number), key, limits) == number


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_key_dir_never_lands_in_the_overlay(tmp_path_factory: pytest.TempPathFactory,
                                            text: str) -> None:
    base = tmp_path_factory.getbasetemp() / "app"
    overlay = base / "overlay"
    try:
        key = fields.key_dir(text, "update.key", base=base, overlay=overlay)
    except FieldError:
        return
    assert not key.is_relative_to(overlay.resolve())


@pytest.mark.parametrize("value, out", [
    ("http://10.0.2.2:8000/", "http://10.0.2.2:8000/"),
    ("HTTPS://updates.example.com/hello/", "https://updates.example.com/hello/"),
    ("http://[fd00::1]:8000/", "http://[fd00::1]:8000/"),
    ("https://u:p@h.example/x/", "https://u:p@h.example/x/"),
])
def test_update_urls_accepted(value: str, out: str) -> None:
    assert fields.update_url(value, "--update-url") == out


@pytest.mark.parametrize("value, words", [
    ("ftp://x/", "not an http:// or https:// URL"),
    ("http://x/\n", "newline"),
    ("http://x/\nPath=http://evil/", "newline"),
    ("http://x/ y", "space"),
    ("http://x/a|b", "cannot hold"),
    ("http://x/a&b%zz", "cannot hold"),
    ("http://x/?a=1", "?query"),
    ("http://x/#top", "#fragment"),
    ("http://", "no valid host"),
    ("http://bad_host/", "no valid host"),
    ("http://x:0/", "port 0"),
    ("http://x:65536/", "invalid host or port"),
    ("http://[zz/", "not a URL"),
    ("http://ex\u00e4mple.com/", "cannot hold"),
])
def test_update_urls_refused(value: str, words: str) -> None:
    with pytest.raises(FieldError) as info:
        fields.update_url(value, "--update-url")
    assert str(info.value).startswith("--update-url: ") and words in str(info.value)


def test_plain_http_is_called_plain_text() -> None:
    with pytest.raises(FieldError) as info:
        fields.update_url("ftp://x/", "update.url")
    assert info.value.hint and "plain text" in info.value.hint


def test_health_url_is_http_only_with_the_reason() -> None:
    assert fields.health_url("http://127.0.0.1:8080/health?full=1") == (
        "http://127.0.0.1:8080/health?full=1")
    with pytest.raises(FieldError, match="plain HTTP") as info:
        fields.health_url("https://127.0.0.1/health", "health[0].url")
    assert info.value.hint and "command:" in info.value.hint
    for value in ("http://user@h/", "http://[::1]/", "http://h/#x"):
        with pytest.raises(FieldError):
            fields.health_url(value)


@pytest.mark.parametrize("value, ok", [
    ("dev-A1", True), ("a" * 63, True), ("a" * 64, False), ("x.example.com", True),
    ("bad_host!", False), ("-x", False), ("x-", False), ("a..b", False), ("x.", False),
    ("", False), ("a.b." * 20, False), ("h\u00f6st", False),
])
def test_hostnames(value: str, ok: bool) -> None:
    if ok:
        assert fields.hostname(value, "--hostname") == value
    else:
        with pytest.raises(FieldError, match=r"^--hostname: "):
            fields.hostname(value, "--hostname")


@pytest.mark.parametrize("value, ok", [
    ("api-token", True), ("a.b_c-1", True), ("../../x", False), (".", False), ("..", False),
    ("a/b", False), ("a" * 255, True), ("a" * 256, False), ("", False), ("a b", False),
])
def test_credential_names(value: str, ok: bool) -> None:
    if ok:
        assert fields.credential_name(value) == value
    else:
        with pytest.raises(FieldError):
            fields.credential_name(value, "--credential")


@pytest.mark.parametrize("value, ok", [
    ("SN0042", True), ("SN:00-42_a.b", True), ("a/b", False), ("a b", False), (".", False),
    ("x" * 64, True), ("x" * 65, False), ("s\u00e9rie", False), ("a\tb", False),
])
def test_serials(value: str, ok: bool) -> None:
    if ok:
        assert fields.serial(value) == value
    else:
        with pytest.raises(FieldError):
            fields.serial(value, "--serial")


@pytest.mark.parametrize("value, out", [
    ("/var/lib/x", "/var/lib/x"), ("/var//lib/./x", "/var/lib/x"), ("//x", "/x"),
    ("relative", None), ("/a/../b", None), ("/", None), ("/a/", None), ("/a/.", None),
    ("/a\nb", None), ("/a\0b", None), ("/" + "x" * 256, None),
])
def test_device_paths(value: str, out: str | None) -> None:
    if out is not None:
        assert fields.device_path(value) == out
    else:
        with pytest.raises(FieldError):
            fields.device_path(value, "--file")


@pytest.mark.parametrize("value, out", [
    ("0644", 0o644), ("644", 0o644), ("0o644", 0o644), ("7777", 0o7777), ("0", 0),
    (0o600, 0o600), (0, 0), ("0689", None), ("07777", None), ("0x1ff", None),
    (0o17777, None), (-1, None), (True, None), ("", None),
])
def test_file_modes(value: object, out: int | None) -> None:
    if out is not None:
        assert fields.file_mode(value) == out
    else:
        with pytest.raises(FieldError):
            fields.file_mode(value)


@pytest.mark.parametrize("value, limit, words", [
    ("100T", "usr", "100T is more than 64G"), ("5G", "esp", "more than 4G"),
    ("2T", "var_min", "more than 1T"), ("63M", "usr", ">= 64M"), ("1.5G", "usr", "like 256M"),
    (-1, "usr", "negative"), ("9" * 30, "usr", "like 256M"),
])
def test_sizes_refused_with_the_limit(value: object, limit: str, words: str) -> None:
    with pytest.raises(FieldError, match=words):
        fields.size(value, f"partitions.{limit}", fields.SIZE_LIMITS[limit])


def test_size_limits() -> None:
    assert fields.SIZE_LIMITS["esp"][1] == 4 * GiB
    assert fields.SIZE_LIMITS["usr"][1] == 64 * GiB
    assert fields.SIZE_LIMITS["var_min"][1] == TiB


def test_board_names_are_never_paths() -> None:
    assert fields.board_name("rpi4") == "rpi4"
    for value in ("../../x", "x/y", "/etc/passwd", "X86", ".hidden"):
        with pytest.raises(FieldError, match="not a path"):
            fields.board_name(value, "--board")


def test_load_board_refuses_a_path() -> None:
    from appsdk.spec.boards import load_board

    with pytest.raises(ConfigError, match=r"--board: '\.\./\.\./x' is not a board name"):
        load_board("../../x", field="--board")


def test_health_commands_are_one_line() -> None:
    assert fields.health_command("curl -fs http://x/ | grep -q ok") == (
        "curl -fs http://x/ | grep -q ok")
    for value in ("true\nreboot", "a\0b", "a\rb", ""):
        with pytest.raises(FieldError):
            fields.health_command(value, "health[0].command")


def test_key_dir_in_the_overlay_is_refused(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "etc").mkdir(parents=True)
    with pytest.raises(FieldError, match="inside the overlay"):
        fields.key_dir("overlay/etc/gnupg", base=tmp_path, overlay=overlay)
    with pytest.raises(FieldError, match="inside the overlay"):
        fields.key_dir("overlay", base=tmp_path, overlay=overlay)
    (tmp_path / "link").symlink_to(overlay / "etc")
    with pytest.raises(FieldError, match="inside the overlay"):
        fields.key_dir("link", base=tmp_path, overlay=overlay)
    assert fields.key_dir("keys", base=tmp_path, overlay=overlay) == (tmp_path / "keys").resolve()
    assert fields.key_dir("overlay/x", base=tmp_path, overlay=None) == (
        tmp_path / "overlay/x").resolve()


def test_argtype_names_the_flag_through_argparse() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--update-url", type=fields.argtype(fields.update_url, "--update-url"))
    assert parser.parse_args(["--update-url", "http://x/"]).update_url == "http://x/"
    with pytest.raises(argparse.ArgumentError, match="not an http"):
        parser.parse_args(["--update-url", "ftp://x/"])


def test_a_refused_value_is_a_config_error_in_json() -> None:
    with pytest.raises(FieldError) as info:
        fields.hostname("bad_host!", "--hostname")
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2
    out = info.value.as_dict()
    assert out["error"] == "ConfigError" and out["field"] == "--hostname"
