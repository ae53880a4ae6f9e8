"""Secure Boot key sets and their enrollment payloads, checked with openssl as the oracle:
each .auth's PKCS#7 signature must verify over exactly the bytes UEFI says are signed, by
the key UEFI says may write that variable (PK: PK itself, KEK: PK, db: KEK)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.core.errors import ConfigError
from appsdk.core.runner import Runner
from appsdk.trust import efivar, secureboot

WHEN = dt.datetime(2026, 11, 30, 12, 34, 56, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> secureboot.SecureBootKeys:
    return secureboot.generate(tmp_path_factory.mktemp("sb") / "set", "Hello / appliance",
                               "hello", Runner(), when=WHEN)


def wrap(signed_data: bytes) -> bytes:
    """The ContentInfo openssl wants around a bare SignedData."""
    def tlv(tag: int, body: bytes) -> bytes:
        n = len(body)
        length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) \
            + n.to_bytes((n.bit_length() + 7) // 8, "big")
        return bytes([tag]) + length + body
    return tlv(0x30, efivar.SIGNED_DATA_OID + tlv(0xA0, signed_data))


def cms_verify(tmp: Path, auth: Path, role: str, trusted: Path) -> subprocess.CompletedProcess[str]:
    stamp, signed, data = efivar.parse_authenticated(auth.read_bytes())
    (tmp / "sig.der").write_bytes(wrap(signed))
    (tmp / "content").write_bytes(efivar.signed_payload(efivar.Variable(role), stamp, data))
    return subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                           "-in", str(tmp / "sig.der"), "-content", str(tmp / "content"),
                           "-CAfile", str(trusted), "-purpose", "any", "-out", os.devnull],
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("role", "signer"), [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")])
def test_each_payload_is_signed_by_the_key_allowed_to_write_it(
        keyset: secureboot.SecureBootKeys, tmp_path: Path, role: str, signer: str) -> None:
    done = cms_verify(tmp_path, keyset.auth(role), role, keyset.cert(signer))
    assert done.returncode == 0, done.stderr
    others = [r for r in secureboot.ROLES if r != signer]
    for other in others:  # and by no other key of the set
        assert cms_verify(tmp_path, keyset.auth(role), role, keyset.cert(other)).returncode != 0


def test_the_signature_covers_name_vendor_attributes_time_and_data(
        keyset: secureboot.SecureBootKeys, tmp_path: Path) -> None:
    blob = keyset.auth("db").read_bytes()
    tampered = tmp_path / "db.auth"
    tampered.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # last byte of the certificate
    assert cms_verify(tmp_path, tampered, "db", keyset.cert("KEK")).returncode != 0
    # The same bytes presented as another variable (db written as KEK) do not verify.
    assert cms_verify(tmp_path, keyset.auth("db"), "KEK", keyset.cert("KEK")).returncode != 0


def test_payloads_hold_the_role_certificate_with_a_stable_owner_and_time(
        keyset: secureboot.SecureBootKeys) -> None:
    owner = uuid.uuid5(secureboot.OWNER_NAMESPACE, "hello")
    for role in secureboot.ROLES:
        stamp, _, data = efivar.parse_authenticated(keyset.auth(role).read_bytes())
        assert stamp == efivar.efi_time(WHEN)
        der = subprocess.run(["openssl", "x509", "-in", str(keyset.cert(role)), "-outform",
                              "DER"], capture_output=True, check=True).stdout
        assert efivar.parse_signature_lists(data) == [(owner, der)]


def test_the_key_set_is_private_and_loads(keyset: secureboot.SecureBootKeys) -> None:
    assert stat.S_IMODE(keyset.directory.stat().st_mode) == 0o700
    for role in secureboot.ROLES:
        assert stat.S_IMODE(keyset.key(role).stat().st_mode) == 0o600
    subject = subprocess.run(["openssl", "x509", "-in", str(keyset.db_cert), "-noout",
                              "-subject"], capture_output=True, text=True, check=True).stdout
    assert "Hello _ appliance Secure Boot db" in subject  # no -subj escape reaches openssl
    assert secureboot.load(keyset.directory).db_fingerprint() == keyset.db_fingerprint()


def test_an_existing_key_set_is_never_overwritten(keyset: secureboot.SecureBootKeys) -> None:
    before = {p.name: p.read_bytes() for p in keyset.directory.iterdir()}
    with pytest.raises(ConfigError, match="already exists"):
        secureboot.generate(keyset.directory, "x", "hello", Runner())
    assert {p.name: p.read_bytes() for p in keyset.directory.iterdir()} == before


def test_a_given_db_key_is_used_and_must_match_its_certificate(
        keyset: secureboot.SecureBootKeys, tmp_path: Path) -> None:
    made = secureboot.generate(tmp_path / "own", "x", "hello", Runner(),
                               db_key=keyset.db_key, db_cert=keyset.db_cert)
    assert made.db_fingerprint() == keyset.db_fingerprint()
    assert made.db_key.read_bytes() == keyset.db_key.read_bytes()
    assert made.cert("PK").read_bytes() != keyset.cert("PK").read_bytes()  # a new PK
    with pytest.raises(ConfigError, match="not for this key") as err:
        secureboot.generate(tmp_path / "mixed", "x", "hello", Runner(),
                            db_key=keyset.key("KEK"), db_cert=keyset.db_cert)
    assert err.value.field == "db_cert"
    assert not (tmp_path / "mixed").exists()  # nothing left that would read as a key set
    with pytest.raises(ConfigError, match="needs its certificate"):
        secureboot.generate(tmp_path / "half", "x", "hello", Runner(), db_key=keyset.db_key)


def test_an_incomplete_or_damaged_key_set_is_refused_by_name(
        keyset: secureboot.SecureBootKeys, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Secure Boot key set"):
        secureboot.load(tmp_path / "none")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("db.key", "db.crt", "PK.auth"):
        (partial / name).write_bytes((keyset.directory / name).read_bytes())
    with pytest.raises(ConfigError, match=r"no KEK\.auth, db\.auth"):
        secureboot.load(partial)
    for name in ("KEK.auth", "db.auth"):
        (partial / name).write_bytes((keyset.directory / name).read_bytes()[:30])
    with pytest.raises(ConfigError, match="not an enrollment payload") as err:
        secureboot.load(partial)
    assert err.value.file == str(partial / "KEK.auth")


def test_efi_time_is_utc_with_zero_padding() -> None:
    stamp = efivar.efi_time(dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone(
        dt.timedelta(hours=2))))
    assert stamp == bytes([0xEE, 0x07, 1, 2, 1, 4, 5]) + bytes(9)
    with pytest.raises(ConfigError):
        efivar.efi_time(dt.datetime(1800, 1, 1, tzinfo=dt.UTC))


certs = st.binary(min_size=1, max_size=600).map(lambda b: b"\x30" + b)


@given(st.lists(st.tuples(st.uuids(), certs), min_size=1, max_size=4))
def test_signature_lists_round_trip(entries: list[tuple[uuid.UUID, bytes]]) -> None:
    data = b"".join(efivar.signature_list(der, owner) for owner, der in entries)
    assert efivar.parse_signature_lists(data) == entries


@given(st.binary(min_size=16, max_size=16), st.binary(max_size=300), st.binary(max_size=300))
def test_authenticated_round_trips(stamp: bytes, signed: bytes, data: bytes) -> None:
    assert efivar.parse_authenticated(efivar.authenticated(stamp, signed, data)) == \
        (stamp, signed, data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_parsers_refuse_garbage_with_value_errors_only(blob: bytes) -> None:
    for parse in (efivar.parse_authenticated, efivar.parse_signature_lists):
        with contextlib.suppress(ValueError):
            parse(blob)
    with contextlib.suppress(ConfigError):
        efivar.unwrap_content_info(blob)


def test_unwrap_takes_the_signed_data_out_of_openssl_output(
        keyset: secureboot.SecureBootKeys) -> None:
    _, signed, _ = efivar.parse_authenticated(keyset.auth("PK").read_bytes())
    assert signed[0] == 0x30
    assert efivar.unwrap_content_info(wrap(signed)) == signed
    # EDK2 looks for the SHA-256 OID at a fixed offset of a bare SignedData (13).
    assert signed[13:22] == bytes.fromhex("608648016503040201")
    with pytest.raises(ConfigError, match="cannot be read"):
        efivar.unwrap_content_info(wrap(signed)[:-1])


def test_cli_makes_the_key_set_next_to_the_update_key_and_refuses_a_second(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json as _json

    from appsdk import cli

    app = tmp_path / "app"
    app.mkdir()
    (app / "appliance.yaml").write_text("id: hello\nversion: '1'\nname: Hello\n")
    keydir = tmp_path / "keys" / "hello"
    assert cli.main(["keys", "secure-boot", str(app), "--keys", str(keydir), "--json"]) == 0
    report = _json.loads(capsys.readouterr().out)
    assert report["directory"] == str(keydir / "secure-boot")
    assert secureboot.load(keydir / "secure-boot").db_fingerprint() == report["db_sha256"]
    # A second run never overwrites; the error names the flag that picks another place.
    assert cli.main(["keys", "secure-boot", str(app), "--keys", str(keydir)]) == \
        ConfigError.exit_code
    err = capsys.readouterr().err
    assert "already exists" in err and "--keys" in err
    # --db-key without --db-cert is refused by name, nothing made.
    code = cli.main(["keys", "secure-boot", str(app), "--secure-boot-keys",
                     str(tmp_path / "other"), "--db-key", str(keydir / "secure-boot/db.key")])
    assert code == ConfigError.exit_code
    assert "--db-cert" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.skipif(not os.path.exists("/usr/bin/gpg"), reason="gpg not installed")
def test_the_update_key_can_join_a_key_set_made_first(tmp_path: Path) -> None:
    from appsdk.trust import keys

    home = tmp_path / "keys" / "hello"
    secureboot.generate(home / secureboot.SUBDIR, "Hello", "hello", Runner())
    key = keys.generate(home, "hello test", Runner())
    assert key.public_keyring.exists()
    assert secureboot.load(home / secureboot.SUBDIR)


OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
needs_ovmf = pytest.mark.skipif(not OVMF_VARS.exists(), reason="ovmf not installed")


@needs_ovmf
def test_a_prepared_variable_store_holds_exactly_the_enrolled_lists(
        keyset: secureboot.SecureBootKeys, tmp_path: Path) -> None:
    from virt.firmware.varstore import edk2  # PyPI virt-firmware (test extras): the oracle

    out = secureboot.write_vars(keyset, "hello", OVMF_VARS, tmp_path / "vars.fd", Runner())
    assert out.stat().st_size == OVMF_VARS.stat().st_size
    variables = edk2.Edk2VarStore(str(out)).get_varlist()
    owner = uuid.uuid5(secureboot.OWNER_NAMESPACE, "hello")
    for role in secureboot.ROLES:
        _, _, enrolled = efivar.parse_authenticated(keyset.auth(role).read_bytes())
        # The store holds what PK.auth, KEK.auth and db.auth would enroll, byte for byte.
        assert bytes(variables[role].data) == enrolled
        assert efivar.parse_signature_lists(enrolled)[0][0] == owner
    assert bytes(variables["SecureBootEnable"].data) == b"\x01"
    assert not list(tmp_path.glob(".*partial"))


def test_a_missing_template_or_tool_names_what_to_do(keyset: secureboot.SecureBootKeys,
                                                     tmp_path: Path) -> None:
    from appsdk.core.errors import ToolMissing
    from appsdk.core.runner import FakeRunner

    with pytest.raises(ConfigError, match="no such UEFI variable store") as err:
        secureboot.write_vars(keyset, "hello", tmp_path / "none.fd", tmp_path / "o.fd",
                              Runner())
    assert err.value.field == "template"

    class NoTool(FakeRunner):
        def which(self, tool: str, hint: str | None = None) -> str:
            raise ToolMissing(f"{tool} not found")

    with pytest.raises(ToolMissing) as missing:
        secureboot.write_vars(keyset, "hello", OVMF_VARS, tmp_path / "o.fd", NoTool())
    assert missing.value.hint == "pip install virt-firmware"
    assert not (tmp_path / "o.fd").exists()


@needs_ovmf
def test_run_keeps_a_variable_store_across_runs(tmp_path: Path) -> None:
    from appsdk.emulate.qemu import persistent_vars
    from appsdk.spec.boards import load_board

    board = load_board("x86-uefi")
    store = persistent_vars(board, tmp_path / "m" / "vars.fd", "q35-ovmf-sb")
    assert store.read_bytes() == OVMF_VARS.read_bytes()
    store.write_bytes(b"changed by the firmware")
    assert persistent_vars(board, store, "q35-ovmf-sb").read_bytes() == \
        b"changed by the firmware"
    with pytest.raises(ConfigError, match="not a regular file") as err:
        persistent_vars(board, tmp_path, "q35-ovmf-sb")
    assert err.value.field == "vars"


@needs_ovmf
def test_cli_keys_vars_writes_the_store_for_the_board(
        keyset: secureboot.SecureBootKeys, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json as _json

    from appsdk import cli

    app = tmp_path / "app"
    app.mkdir()
    (app / "appliance.yaml").write_text("id: hello\nversion: '1'\n")
    code = cli.main(["keys", "vars", str(app), "--secure-boot-keys", str(keyset.directory),
                     "--emulator", "q35-ovmf-sb", "-o", str(tmp_path / "sb.fd"), "--json"])
    assert code == 0, capsys.readouterr().err
    report = _json.loads(capsys.readouterr().out)
    assert report["template"] == str(OVMF_VARS)
    assert (tmp_path / "sb.fd").stat().st_size == OVMF_VARS.stat().st_size
