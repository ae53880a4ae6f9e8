"""Keys in an HSM: PKCS#11 URIs are parsed strictly (any text is a key or a ConfigError), a
key set can name its db key by URI (db.uri, no key file), and the sign stage hands that URI
to systemd-sbsign through OpenSSL's pkcs11 provider, with what the module needs bound in.
The real token (SoftHSM) signs in the Secure Boot VM test."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appsdk.cli.argtypes import key_source
from appsdk.core.errors import ConfigError
from appsdk.core.runner import Call, FakeRunner, Result, Runner
from appsdk.core.sandbox import Sandbox
from appsdk.pipeline.stages.sign import sign_efi
from appsdk.pipeline.tools import ToolsTree
from appsdk.trust import pkcs11, secureboot
from appsdk.trust.pkcs11 import Pkcs11Key, parse_uri

URI = "pkcs11:token=appsdk;object=db;type=private"


@pytest.mark.parametrize(("text", "pin_file"), [
    (URI, None),
    ("pkcs11:token=My%20Token;id=%01%02", None),
    ("pkcs11:object=db?pin-source=file:/run/secrets/pin", Path("/run/secrets/pin")),
    ("pkcs11:model=SoftHSM%20v2;object=db?pin-value=1234", None),
])
def test_uris_that_name_a_private_key(text: str, pin_file: Path | None) -> None:
    key = parse_uri(text)
    assert key.uri == text and key.pin_file == pin_file


@pytest.mark.parametrize(("text", "words"), [
    ("db.key", "starts with 'pkcs11:'"),
    ("pkcs11:token=appsdk", "names no key"),
    ("pkcs11:object=db;type=public", "public object"),
    ("pkcs11:object=db;object=other", "given twice"),
    ("pkcs11:object", "no name=value"),
    ("pkcs11:object=my key", "no spaces"),
    ("pkcs11:object=db\n", "no spaces"),
    ("pkcs11:object=%ff", "not UTF-8"),
    ("pkcs11:object=db?pin-source=pin.txt", "absolute path"),
    ("pkcs11:object=" + "a" * 3000, "longer than"),
])
def test_bad_uris_are_refused_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_uri(text)
    assert words in info.value.message and info.value.hint


@given(st.text(max_size=200))
def test_any_text_is_a_key_or_a_config_error(text: str) -> None:
    try:
        key = parse_uri("pkcs11:" + text)
    except ConfigError:
        return
    assert isinstance(key, Pkcs11Key) and "pin-value=" not in key.redacted.replace(
        "pin-value=***", "")


def test_a_pin_never_shows_in_messages() -> None:
    key = parse_uri("pkcs11:object=db?pin-value=s3cret&module-name=softhsm2")
    assert "s3cret" not in str(key) and "s3cret" in key.uri


def test_the_cli_takes_a_uri_or_an_existing_file(tmp_path: Path) -> None:
    assert key_source(URI) == parse_uri(URI)
    (tmp_path / "db.key").write_text("x")
    assert key_source(str(tmp_path / "db.key")) == tmp_path / "db.key"
    with pytest.raises(argparse.ArgumentTypeError, match="names no key"):
        key_source("pkcs11:token=appsdk")
    with pytest.raises(argparse.ArgumentTypeError, match="no such file"):
        key_source(str(tmp_path / "missing.key"))


def openssl_runner(in_sandbox: Callable[[Call], Result] | None = None) -> FakeRunner:
    """Host openssl runs for real (key sets need real certificates); openssl in the tools
    tree sandbox, where the HSM is reached, is played by `in_sandbox` (default: succeeds)."""
    real = Runner()

    def openssl(call: Call) -> Result:
        if call.wrapper:
            return in_sandbox(call) if in_sandbox else Result(call.argv, 0, "", "", 0.0)
        return real.run(["openssl", *call.argv[1:]])

    runner = FakeRunner(answers={"openssl": openssl})
    runner.which = lambda tool, hint=None: tool  # type: ignore[method-assign]
    return runner


@pytest.fixture
def hsm_keyset(tmp_path: Path) -> secureboot.SecureBootKeys:
    """A file key set whose db key has moved into an HSM: db.key gone, db.uri names it."""
    keyset = secureboot.generate(tmp_path / "set", "Hello", "hello", Runner())
    keyset.db_key.unlink()
    keyset.db_uri.write_text(URI + "\n")
    return keyset


def test_a_key_set_with_db_uri_loads_and_signs_by_uri(hsm_keyset: secureboot.SecureBootKeys,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = secureboot.load(hsm_keyset.directory)
    assert loaded.db_signer() == parse_uri(URI)
    store = tmp_path / "tokens"
    store.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {store}\n")
    monkeypatch.setenv(pkcs11.BIND_ENV, str(store))
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    runner = FakeRunner()
    binary = tmp_path / "in" / "uki.efi"
    binary.parent.mkdir()
    binary.write_bytes(b"MZ")
    (tmp_path / "out").mkdir()
    sign_efi(binary, tmp_path / "out" / "uki.efi", loaded, 0,
             ToolsTree(tmp_path / "tree", "k"), runner)
    sign = next(c for c in runner.calls if "sign" in c.argv and "faketime" in c.argv[0])
    assert "--private-key-source=provider:pkcs11" in sign.argv
    assert f"--private-key={URI}" in sign.argv
    assert not any(str(hsm_keyset.db_key) in a for a in sign.argv)
    wrapper = " ".join(sign.wrapper)
    assert f"--bind {store} {store}" in wrapper and f"--ro-bind {conf} {conf}" in wrapper


def test_a_key_set_with_both_db_key_and_db_uri_is_refused(
        hsm_keyset: secureboot.SecureBootKeys) -> None:
    hsm_keyset.db_key.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"both db\.key and db\.uri"):
        secureboot.load(hsm_keyset.directory)


def test_a_damaged_db_uri_is_refused_by_name(hsm_keyset: secureboot.SecureBootKeys) -> None:
    hsm_keyset.db_uri.write_bytes(b"pkcs11:object=\xff\n")
    with pytest.raises(ConfigError) as info:
        secureboot.load(hsm_keyset.directory)
    assert info.value.file == str(hsm_keyset.db_uri)


def test_a_missing_module_path_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pkcs11.BIND_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as info:
        pkcs11.sandbox_paths(parse_uri(URI))
    assert info.value.file == str(tmp_path / "nowhere") and pkcs11.BIND_ENV in str(
        info.value.hint)


def test_a_db_key_in_an_hsm_is_checked_against_its_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token signs a challenge and the certificate must verify it: a certificate of
    another key is refused before anything is kept; one that verifies is recorded as
    db.uri, with no key file."""
    monkeypatch.delenv(pkcs11.BIND_ENV, raising=False)
    other = secureboot.generate(tmp_path / "other", "Other", "other", Runner())
    seen: list[tuple[str, ...]] = []

    def refuse(call: Call) -> Result:
        seen.append(call.argv)
        failed = "-verify" in call.argv
        return Result(call.argv, int(failed), "", "Verification failure" * failed, 0.0)

    hsm = Sandbox(tmp_path / "tree")
    with pytest.raises(ConfigError, match="not for this key") as info:
        secureboot.generate(tmp_path / "set", "Hello", "hello", openssl_runner(refuse),
                            db_key=parse_uri(URI), db_cert=other.db_cert, hsm=hsm)
    assert info.value.file == str(other.db_cert)
    assert any("-sign" in argv and URI in argv for argv in seen)
    assert not (tmp_path / "set").exists()  # made here, so taken away again

    made = secureboot.generate(tmp_path / "set", "Hello", "hello", openssl_runner(),
                               db_key=parse_uri(URI), db_cert=other.db_cert, hsm=hsm)
    assert made.db_uri.read_text() == URI + "\n" and not made.db_key.exists()
    assert stat.S_IMODE(made.db_uri.stat().st_mode) == 0o600
    assert secureboot.load(made.directory).db_signer() == parse_uri(URI)


def test_pin_file_is_bound_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234")
    monkeypatch.delenv(pkcs11.BIND_ENV, raising=False)
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    monkeypatch.delenv(pkcs11.MODULE_ENV, raising=False)
    rw, ro = pkcs11.sandbox_paths(parse_uri(f"pkcs11:object=db?pin-source=file:{pin}"))
    assert rw == () and ro == (pin,)
    assert os.environ.get(pkcs11.BIND_ENV) is None
