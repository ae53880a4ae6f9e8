"""Provisioning plans: per-device values, templates, and errors that name file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.errors import ConfigError
from appsdk.provision_serial import identity_files, load_plan


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
    ("update_url: ftp://x/\n", "must be an http:// or https:// URL"),
    ("files:\n  - {src: blob, dest: relative/path}\n", "must be an absolute path"),
    ("plan: 2\n", "unsupported plan version"),
])
def test_bad_plans_name_the_place(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_plan(write_plan(tmp_path, text))
