"""The update-signing key directory: made by us (0700) or refused; never chmod-ed."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from appsdk.cli import shown
from appsdk.core.errors import AppsdkError, ConfigError, ToolMissing
from appsdk.core.runner import FakeRunner, Result, Runner
from appsdk.trust import keys

needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg not installed")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_gpg
def test_generate_makes_a_private_directory_with_parents(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        key = keys.generate(tmp_path / "a b/-keys", "test (x)", Runner())
    finally:
        os.umask(old)
    assert mode(tmp_path / "a b/-keys") == 0o700
    assert key.public_keyring.is_file()
    assert keys.load(tmp_path / "a b/-keys", Runner()).fingerprint == key.fingerprint


@needs_gpg
def test_an_empty_private_directory_of_ours_is_used_as_it_is(tmp_path: Path) -> None:
    home = tmp_path / "keys"
    home.mkdir(mode=0o700)
    keys.generate(home, "k", Runner())
    assert mode(home) == 0o700


@pytest.mark.parametrize("bits", [0o755, 0o750, 0o1777, 0o701])
def test_an_existing_open_directory_is_refused_and_left_alone(tmp_path: Path,
                                                               bits: int) -> None:
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(bits)
    with pytest.raises(ConfigError, match="open to other users") as info:
        keys.generate(home, "k", FakeRunner())
    assert str(home) in str(info.value) and info.value.hint and "new key dir" in info.value.hint
    assert "(--keys)" in str(shown(info.value)[1])  # the command line names the flag
    assert mode(home) == bits and list(home.iterdir()) == []


def test_a_non_empty_directory_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "keys"
    home.mkdir(mode=0o700)
    (home / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        keys.generate(home, "k", FakeRunner())
    assert (home / "notes.txt").read_text() == "mine"


def test_an_existing_key_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "keys"
    (home / "private-keys-v1.d").mkdir(parents=True, mode=0o700)
    with pytest.raises(ConfigError, match="already exists"):
        keys.generate(home, "k", FakeRunner())


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "keys"
    home.mkdir(mode=0o700)
    os.chown(home, 12345, 12345)
    with pytest.raises(ConfigError, match="another user"):
        keys.generate(home, "k", FakeRunner())


def test_a_key_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path / "file/keys"):
        with pytest.raises(ConfigError, match=r"not a directory|cannot") as info:
            keys.generate(path, "k", FakeRunner())
        assert str(path) in str(info.value) and info.value.hint


def test_gpg_missing_names_the_directory(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissing, match="gpg") as info:
        keys.generate(tmp_path / "keys", "k", FakeRunner())
    assert str(tmp_path / "keys") in str(info.value) and info.value.hint
    assert not (tmp_path / "keys").exists()


@needs_gpg
def test_gpg_failing_names_the_directory_and_leaves_nothing(tmp_path: Path) -> None:
    gpg = shutil.which("gpg")
    assert gpg
    runner = FakeRunner(answers={gpg: Result((gpg,), 2, "", "gpg: agent died", 0.0)})
    with pytest.raises(AppsdkError, match="gpg could not create a key") as info:
        keys.generate(tmp_path / "keys", "k", runner)
    assert str(tmp_path / "keys") in str(info.value) and "agent died" in str(info.value)
    assert not (tmp_path / "keys").exists()
    home = tmp_path / "mine"
    home.mkdir(mode=0o700)
    with pytest.raises(AppsdkError):
        keys.generate(home, "k", runner)
    assert home.is_dir() and mode(home) == 0o700  # existing: emptied, kept


@pytest.mark.parametrize("uid", ["", "a\nb", "x\0"])
def test_a_bad_user_id_is_refused(tmp_path: Path, uid: str) -> None:
    with pytest.raises(ConfigError, match="user id"):
        keys.generate(tmp_path / "keys", uid, FakeRunner())


def test_gpg_argv_cannot_be_read_as_options(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = FakeRunner()
    key = keys.SigningKey(Path("-home"), "A" * 40)
    keys.sign(key, Path("--output=x"), runner)
    argv = runner.history[0].argv
    assert str(tmp_path / "-home") in argv
    assert argv[-2:] == ("--", str(tmp_path / "--output=x"))
    assert str(tmp_path / "--output=x.gpg") in argv


@needs_gpg
def test_sign_and_verify_paths_with_spaces_and_dashes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = Runner()
    key = keys.generate(Path("-my keys"), "k", runner)
    data = Path("-SHA 256SUMS")
    data.write_text("0" * 64 + "  x.xz\n")
    signature = keys.sign(key, data, runner)
    assert signature == Path("-SHA 256SUMS.gpg") and signature.is_file()
    keys.verify(Path("-my keys") / keys.PUBRING, data, signature, runner)
