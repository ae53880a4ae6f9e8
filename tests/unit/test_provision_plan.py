"""Provisioning plans: per-device values, templates, and errors that name file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appsdk.cli import main, shown
from appsdk.core.errors import ConfigError
from appsdk.deliver.provision_serial import (
    DevicePlan,
    FileSpec,
    apply_overrides,
    identity_files,
    load_plan,
    select_device,
)


def write_plan(tmp_path: Path, text: str) -> Path:
    (tmp_path / "k.pub").write_text("ssh-ed25519 AAAA key@x\n")
    (tmp_path / "blob").write_bytes(b"\x00\x01")
    (tmp_path / "tok").write_text("t0k")
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


PLAN = """\
plan: 1
hostname: dev-{serial}
update_url: https://u.example.com/{vars.channel}/
authorized_keys: [k.pub]
credentials: {token: tok}
files:
  - {src: blob, dest: "/var/lib/app/{serial}.bin", mode: "0600"}
devices:
  - serial: A1
    vars: {channel: beta}
  - serial: B2
    hostname: bench
    vars: {channel: stable}
    login: {user: admin, password: pw}
"""


def test_devices_get_plan_values_with_their_own_filled_in(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, PLAN))
    assert plan.serials == ("A1", "B2")
    a = plan.device("A1")
    assert a.hostname == "dev-A1" and a.update_url == "https://u.example.com/beta/"
    assert a.files[0].dest == "/var/lib/app/A1.bin" and a.files[0].mode == 0o600
    assert a.user == "root" and a.password is None
    b = plan.device("B2")
    assert b.hostname == "bench" and b.update_url == "https://u.example.com/stable/"
    assert (b.user, b.password) == ("admin", "pw")
    ident = identity_files(a)
    assert ident["/var/lib/appsdk/identity/hostname"] == (b"dev-A1\n", 0o644)
    assert ident["/var/lib/appsdk/identity/credentials/token"] == (b"t0k", 0o600)
    assert ident["/var/lib/appsdk/identity/authorized_keys"][1] == 0o600


def test_which_device_must_be_said(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, PLAN))
    with pytest.raises(ConfigError, match="lists 2 devices"):
        plan.device(None)
    with pytest.raises(ConfigError, match="no device with serial 'Z9'"):
        plan.device("Z9")


@pytest.mark.parametrize("text, message", [
    ("hostname: x\nfiles:\n  - {src: missing.bin, dest: /x}\n",
     r"plan.yaml:3: files\[0\].src: file 'missing.bin' not found"),
    ("hostname: x-{vars.nope}\ndevices:\n  - serial: A\n",
     r"hostname: unknown variable \{vars.nope\}"),
    ("devices:\n  - serial: A\n    hostname: not_valid!\n", "not a valid hostname"),
    ("devices:\n  - serial: A\n  - serial: A\n", "'A' is listed twice"),
    ("hostnme: x\n", r"plan.yaml:1: hostnme: unknown field"),
    ("update_url: ftp://x/\n", r"plan.yaml:1: update_url: 'ftp://x/' is not an http:// or "
     "https:// URL"),
    ("files:\n  - {src: blob, dest: relative/path}\n", "must be an absolute path"),
    ("plan: 2\n", "unsupported plan version"),
])
def test_bad_plans_name_the_place(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_plan(write_plan(tmp_path, text))


# Issue 12, classes 5 and 6: plan values, CLI flags and Python-made plans get one check.
@pytest.mark.parametrize("mode_yaml, mode", [
    ('"0644"', 0o644), ("0644", 0o644), ("644", 0o644), ("0600", 0o600), ("'0o755'", 0o755),
])
def test_file_mode_is_the_octal_digits_written(tmp_path: Path, mode_yaml: str,
                                               mode: int) -> None:
    text = f"hostname: x\nfiles:\n  - {{src: blob, dest: /var/x, mode: {mode_yaml}}}\n"
    assert load_plan(write_plan(tmp_path, text)).device().files[0].mode == mode


@pytest.mark.parametrize("text, message", [
    ("hostname: x\nfiles:\n  - {src: blob, dest: /var/x, mode: 0689}\n",
     r"plan.yaml:3: files\[0\].mode: '0689' is not an octal mode"),
    ("hostname: x\nfiles:\n  - {src: blob, dest: /var/x, mode: 0x1ff}\n", "not an octal mode"),
    ("hostname: x\nfiles:\n  - {src: blob, dest: '/var/lib/../../etc/shadow'}\n",
     r"files\[0\].dest: .* contains '\.\.'"),
    ("hostname: x\nfiles:\n  - {src: blob, dest: \"/var/x\\nrm -rf /\"}\n", "newline"),
    ("hostname: x\ncredentials: {'../../x': tok}\n", r"credentials\.\.\./\.\./x: .* not a "
     "credential name"),
    ("hostname: x\nhostname: y\n", r"plan.yaml:2: not valid YAML: duplicate key 'hostname' "
     r"\(also on line 1\)"),
    ("update_url: \"http://x/\\n\"\n", r"update_url: contains a newline"),
    ("update_url: 'http://x/a|b'\n", "characters a URL cannot hold"),
    ("devices:\n  - serial: 'A B'\n", r"devices\[0\].serial: 'A B' is not a serial number"),
    ("devices:\n  - serial: A\n    vars: {x: [1]}\n    hostname: h-{vars.x}\n",
     r"\{vars.x\} is not a text value"),
    ("hostname: x\nlogin: {user: \"root\\nreboot\"}\n", r"login.user: .* not a login name"),
    ("hostname: x\ncredentials: [{a: 1}]\n", "must be a mapping"),
    ("hostname: bad_host!\n", "plan.yaml:1: hostname: 'bad_host!' is not a valid hostname"),
])
def test_bad_plan_values_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_plan(write_plan(tmp_path, text))


@pytest.mark.parametrize("overrides, flag, words", [
    ({"update_url": "ftp://x/"}, "--update-url", "not an http:// or https:// URL"),
    ({"update_url": "http://x/\nPath=http://evil/"}, "--update-url", "newline"),
    ({"hostname": "bad_host!"}, "--hostname", "not a valid hostname"),
    ({"serial": "a/b"}, "--serial", "not a serial number"),
    ({"credentials": ["../../x=tok"]}, "--credential", "not a credential name"),
    ({"credentials": ["name"]}, "--credential", "NAME=FILE"),
    ({"files": ["blob:relative"]}, "--file", "absolute path"),
    ({"files": ["blob:/var/x:0999"]}, "--file", "octal mode"),
    ({"files": ["nope:/var/x"]}, "--file", "not a file"),
    ({"authorized_keys": [Path("nope.pub")]}, "--authorized-key", "not a file"),
    ({"user": "a b"}, "--user", "login name"),
    ({"password": "pw\n"}, "--password", "newline"),
])
def test_cli_overrides_get_the_plan_fields_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], flag: str,
    words: str,
) -> None:
    write_plan(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        apply_overrides(DevicePlan(serial="A1"), **overrides)
    # The library names the argument; the command line shows it as the flag.
    argument = flag.removeprefix("--").replace("-", "_")
    assert str(info.value).startswith(f"{argument}: "), str(info.value)
    assert "--" not in str(info.value).split(":")[0]
    assert shown(info.value)[0].startswith(f"{flag}: ") and words in str(info.value)


def test_cli_overrides_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = load_plan(write_plan(tmp_path, PLAN)).device("A1")
    monkeypatch.chdir(tmp_path)
    out = apply_overrides(plan, hostname="lab-1", update_url="HTTPS://u.example.com/x/",
                          files=["blob:/var//lib/./y.bin:600"], credentials=["token=k.pub"],
                          authorized_keys=[Path("k.pub")], user="admin")
    assert (out.hostname, out.update_url, out.user) == ("lab-1", "https://u.example.com/x/",
                                                        "admin")
    assert out.files[-1] == FileSpec(Path("blob"), "/var/lib/y.bin", 0o600)
    assert dict(out.credentials)["token"] == Path("k.pub")
    assert apply_overrides(plan) == plan


def test_plans_made_in_python_are_checked() -> None:
    with pytest.raises(ConfigError, match="hostname: 'bad_host!'"):
        DevicePlan(hostname="bad_host!")
    with pytest.raises(ConfigError, match=r"credentials: '\.\./x'"):
        DevicePlan(credentials=(("../x", Path("f")),))
    with pytest.raises(ConfigError, match="dest: 'relative'"):
        FileSpec(Path("f"), "relative")
    with pytest.raises(ConfigError, match="mode"):
        FileSpec(Path("f"), "/x", 0o17777)
    assert FileSpec(Path("f"), "/a//b", 0o600).dest == "/a/b"


def test_device_selection_checks_the_serial(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device: 'a/b' is not a serial") as info:
        select_device(None, "a/b")
    assert shown(info.value)[0].startswith("--device: 'a/b' is not a serial")
    assert select_device(None, "SN1").serial == "SN1"
    assert select_device(write_plan(tmp_path, PLAN), "B2").hostname == "bench"


def test_cli_provision_serial_refuses_a_bad_flag_before_the_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The port is never opened: the flag is refused first (exit 2, a ConfigError).
    code = main(["provision", "serial", "socket://127.0.0.1:9", "--update-url", "ftp://x/"])
    assert code == 2
    assert "--update-url" in capsys.readouterr().err
