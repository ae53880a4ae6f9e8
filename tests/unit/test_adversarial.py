"""Findings of an adversarial pass over the hardened CLI (issue 12), one regression test each:
inputs that still ended in a wrong success, a write or read outside where it belongs, a
hang, or work started before the input was checked."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from test_hostile_inputs import NODEV, app, check, gpt, run_cli, sandbox
from test_release import key, make_build

from appsdk.core.errors import AppsdkError, ConfigError
from appsdk.core.runner import Runner
from appsdk.deliver.flash import open_source
from appsdk.deliver.provision_serial import update_files
from appsdk.trust.keys import SigningKey
from appsdk.update import release as rel

__all__ = ["key", "sandbox"]  # fixtures, imported for pytest


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail, rather than hang, a test whose subject blocks forever (a FIFO read)."""
    def expired(_sig: int, _frame: FrameType | None) -> None:
        raise TimeoutError("blocked: the input was opened without checking what it is")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- flash and run take any file for a disk image ------------------------------------------

def _not_images(tmp: Path) -> list[Path]:
    """Files a careless user passes as the image: build.json, a tarball, a text file."""
    build = make_build(tmp / "build", "1.0")  # its build.json names another image
    with tarfile.open(tmp / "app.tgz", "w:gz") as tar:
        tar.add(build / "build.json", arcname="build.json")
    (tmp / "notes.txt").write_bytes(b"hello\n" * 4000)
    return [build / "build.json", tmp / "app.tgz", tmp / "notes.txt"]


def test_a_file_without_a_partition_table_is_no_image(sandbox: Path) -> None:
    # Was: flashed ("verified", exit 0) after clearing the card's partition table.
    for path in _not_images(sandbox):
        with pytest.raises(ConfigError, match="no partition table") as info:
            open_source(path)
        assert info.value.file == str(path)


def test_an_mbr_or_gpt_image_is_still_an_image(sandbox: Path) -> None:
    disk = sandbox / "disk.img"
    disk.write_bytes(gpt(128))
    assert open_source(disk).image == disk
    mbr = bytearray(1 << 20)
    mbr[510:512] = b"\x55\xaa"
    (sandbox / "mbr.img").write_bytes(bytes(mbr))
    assert open_source(sandbox / "mbr.img").bmap.image_size == 1 << 20


@pytest.mark.parametrize("command", ["flash", "run", "verify"])
def test_cli_refuses_a_non_image_before_the_device(command: str, sandbox: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Was: run --print printed a QEMU command line for build.json, exit 0.
    target = _not_images(sandbox)[1]
    argv = {"flash": ["flash", str(target), NODEV, "--yes", "--json"],
            "verify": ["verify", str(target), NODEV, "--json"],
            "run": ["run", str(target), "--print"]}[command]
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, ("app.tgz",))
    assert code == 2 and "no partition table" in err, err


# --- release copies whatever a build directory's name points at ----------------------------

def _replace_artifact(build: Path, make: str) -> None:
    record = json.loads((build / "build.json").read_text())
    entry = record["artifacts"]["update-uki"]
    path = build / entry["file"]
    path.unlink()
    if make == "symlink":  # to a host secret, with the digest of its bytes recorded
        secret = build.parent / "secret"
        secret.write_bytes(b"root:$6$secret\n")
        os.chmod(secret, 0o600)
        path.symlink_to(secret)
        entry["sha256"] = hashlib.sha256(secret.read_bytes()).hexdigest()
        entry["size"] = secret.stat().st_size
    elif make == "fifo":
        os.mkfifo(path)
    elif make == "longer":  # more bytes than build.json records: /dev/zero is endless
        path.write_bytes(b"x" * (entry["size"] + 1024 * 1024))
    (build / "build.json").write_text(json.dumps(record))


@pytest.mark.parametrize("make", ["symlink", "fifo", "longer"])
def test_release_takes_only_regular_files_of_the_recorded_size(
        make: str, tmp_path: Path, key: SigningKey, deadline: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: a symlink to /etc/shadow was published 0644; a FIFO hung the release; a link
    # to /dev/zero was copied until the disk was full.
    build = make_build(tmp_path / "b1", "1.0")
    _replace_artifact(build, make)
    copied: list[int] = []
    real_copy = rel._copy

    def copy(source: Path, target: Path, *args: object) -> tuple[str, int]:
        try:
            return real_copy(source, target, *args)
        finally:
            copied.append(target.stat().st_size if target.exists() else 0)
    monkeypatch.setattr(rel, "_copy", copy)
    with pytest.raises(AppsdkError, match=r"hello_1\.0\.efi\.xz") as info:
        rel.release(tmp_path / "www", [build], key, Runner())
    assert info.value.exit_code in (2, 8)
    assert not (tmp_path / "www").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".www.")]
    # Stopped one byte past the recorded size, not at the end of the source.
    assert max(copied, default=0) <= 1500 + 1, copied


# --- provision serial: update directory and log checked only after a device answered -------

def _update_dir(tmp: Path, names: list[str]) -> Path:
    directory = tmp / "upd"
    directory.mkdir()
    lines = "".join(f"{'0' * 64}  {n}\n" for n in names)
    (directory / "SHA256SUMS").write_text(lines)
    (directory / "SHA256SUMS.gpg").write_bytes(b"sig")
    return directory


@pytest.mark.parametrize("name", ["/etc/hostname", "../secret", "a\tb/../../x"])
def test_update_files_are_names_in_the_directory(name: str, tmp_path: Path) -> None:
    # Was: SHA256SUMS listing /etc/hostname pushed the host's file onto the device.
    directory = _update_dir(tmp_path, ["hello_1.0.efi.xz", name])
    with pytest.raises(ConfigError, match="SHA256SUMS"):
        update_files(directory)


def test_update_files_non_utf8_sums(tmp_path: Path) -> None:
    directory = _update_dir(tmp_path, [])
    (directory / "SHA256SUMS").write_bytes(b"\xff\xfe  x\n")
    with pytest.raises(ConfigError, match="SHA256SUMS"):
        update_files(directory)


def test_update_files_listed_must_exist(tmp_path: Path) -> None:
    directory = _update_dir(tmp_path, ["hello_1.0.efi.xz"])
    with pytest.raises(ConfigError, match=r"hello_1\.0\.efi\.xz"):
        update_files(directory)
    (directory / "hello_1.0.efi.xz").write_bytes(b"data")
    assert [p.name for p in update_files(directory)] == [
        "hello_1.0.efi.xz", "SHA256SUMS", "SHA256SUMS.gpg"]


@pytest.mark.parametrize("flag", ["--update", "--log"])
def test_provision_serial_checks_its_inputs_before_the_console(
        flag: str, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: waited 30 s for (or logged in on) a device, then failed on the bad input.
    value = str(_update_dir(sandbox, ["/etc/hostname"]) if flag == "--update" else sandbox)
    argv = ["provision", "serial", "socket://127.0.0.1:9", flag, value, "--json"]
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, ("SHA256SUMS", "--log"))


# --- the signing key inside the overlay ---------------------------------------------------

def test_keys_generate_refuses_a_directory_inside_the_overlay(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: created the private key in overlay/usr/k, which every build then copies into the
    # image.
    directory = app(sandbox)
    argv = ["keys", "generate", str(directory), "--keys", str(directory / "overlay/usr/k"),
            "--json"]
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, ("--keys",))
    assert "inside the overlay" in err and not (directory / "overlay/usr/k").exists()


@pytest.mark.parametrize("command", ["keys", "build"])
def test_default_key_dir_inside_the_overlay_is_refused(
        command: str, sandbox: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: APPSDK_KEYS_DIR inside the overlay made the key there, and build went on to
    # image it; --keys and update.key were refused, the default was not.
    directory = app(sandbox)
    keys_dir = directory / "overlay" / "usr" / "lib"
    keys_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("APPSDK_KEYS_DIR", str(keys_dir))
    (keys_dir / "hostile").mkdir()  # build signs only if the key directory exists
    argv = (["keys", "generate", str(directory), "--json"] if command == "keys"
            else ["build", str(directory), "--json"])
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, ("APPSDK_KEYS_DIR",))
    assert "inside the overlay" in err


# --- two builds into one output directory ---------------------------------------------------

class _Stop(Exception):
    pass


def test_a_second_build_into_the_same_output_is_refused(
        sandbox: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: the second build deleted the first one's .work (its staged artifacts) and the
    # two then published over each other.
    import appsdk.pipeline.builder
    directory = app(sandbox)
    seen: dict[str, object] = {}

    def tools_of_first_build(*_args: object, **_kwargs: object) -> None:
        work = directory / "build" / "x86-uefi" / ".work"
        marker = work / "out" / "staged-by-the-first-build"
        marker.write_text("x")
        seen["code"] = run_cli(["build", str(directory), "--json"], capsys)
        seen["kept"] = marker.exists()
        raise _Stop

    monkeypatch.setattr(appsdk.pipeline.builder, "ensure_tools", tools_of_first_build)
    with pytest.raises(_Stop):
        appsdk.pipeline.builder.build(directory)
    code, out, err = seen["code"]  # type: ignore[misc]
    check(code, out, err, ["build", "--json"], ("x86-uefi",))
    assert "another build" in err and seen["kept"], err
    # Once the first build is over, the directory is free again.
    monkeypatch.setattr(appsdk.pipeline.builder, "ensure_tools",
                        lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        appsdk.pipeline.builder.build(directory)


# --- run --disk: an existing file is taken as the VM's disk --------------------------------

def test_run_disk_must_be_a_disk_image(sandbox: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    # Was: `--disk app/appliance.yaml --disk-size 1G` grew appliance.yaml to 1 GiB (even
    # with --print) and would have booted it as a disk, writable.
    disk = sandbox / "disk.img"
    disk.write_bytes(gpt(128))
    victim = app(sandbox) / "appliance.yaml"
    before = victim.read_bytes()
    run = ["run", str(disk), "--print", "--accel", "tcg", "--disk"]
    argv = [*run, str(victim), "--disk-size", "1G"]
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, ("--disk",))
    assert victim.read_bytes() == before
    # A working copy made earlier is still used, and grown.
    copy = sandbox / "copy.img"
    assert run_cli([*run, str(copy)], capsys)[0] == 0
    argv = [*run, str(copy), "--disk-size", "2M"]
    assert run_cli(argv, capsys)[0] == 0 and copy.stat().st_size == 2 << 20


# --- provision serial --authorized-key: any bytes were pushed as authorized_keys -----------

PRIVATE = (b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
           b"-----END OPENSSH PRIVATE KEY-----\n")


@pytest.mark.parametrize(("content", "says"), [
    (PRIVATE, "PRIVATE key"), (b"garbage\x00\xff\n", "not an OpenSSH public key"),
    (b"", "not an OpenSSH public key"), (b"ssh-ed25519 AAAA x\nrm -rf /\n", "line 2")])
def test_authorized_key_must_be_a_public_key(content: bytes, says: str, sandbox: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Was: `--authorized-key ~/.ssh/id_ed25519` (the private key) was pushed to the device.
    key_file = sandbox / "id_ed25519"
    key_file.write_bytes(content)
    argv = ["provision", "serial", "socket://127.0.0.1:9", "--authorized-key", str(key_file),
            "--json"]
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, ("--authorized-key",))
    assert says in err
    plan = sandbox / "plan.yaml"
    plan.write_text("authorized_keys: [id_ed25519]\n")
    argv = ["provision", "serial", "socket://127.0.0.1:9", str(plan), "--json"]
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, ("plan.yaml",))
    assert says in err


def test_public_keys_are_accepted(tmp_path: Path) -> None:
    from appsdk.spec import fields
    key_file = tmp_path / "k.pub"
    key_file.write_text("# lab keys\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ user@host\n\n"
                        'command="echo a b",from="10.0.0.0/8" ssh-rsa AAAAB3NzaC1yc2E= x\n'
                        "sk-ssh-ed25519@openssh.com AAAAGnNr x\n")
    assert fields.authorized_key_file(str(key_file)) == key_file
