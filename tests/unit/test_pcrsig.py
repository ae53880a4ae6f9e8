"""The PCR policy key of a key set and the signed PCR 11 policies a UKI carries: the key
set's own DER reading checked against openssl, and `pcrsig.verify` against UKIs whose
.pcrsig was signed by openssl the way systemd-measure signs (RSA PKCS#1 v1.5 over SHA-256
of the policy digest), then tampered with one way at a time."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pe import tiny_pe

from appsdk.core.errors import ConfigError, VerifyFailed
from appsdk.core.runner import Call, FakeRunner, Result, Runner
from appsdk.core.sandbox import Sandbox
from appsdk.image import pcrsig
from appsdk.trust import secureboot, x509
from appsdk.trust.secureboot import PCR


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> secureboot.SecureBootKeys:
    return secureboot.generate(tmp_path_factory.mktemp("pcr") / "set", "Hello", "hello",
                               Runner())


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> secureboot.SecureBootKeys:
    return secureboot.generate(tmp_path_factory.mktemp("pcr") / "other", "Other", "other",
                               Runner())


OPENSSL = shutil.which("openssl") or "openssl"  # before any test narrows PATH


def openssl(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run([OPENSSL, *args], input=data, capture_output=True,
                          check=True).stdout


def host_openssl(call: Call) -> Result:
    """Plays the tools tree's openssl with the host's (the sandbox is the FakeRunner's)."""
    done = subprocess.run([OPENSSL, *call.argv[1:]], capture_output=True, text=True,
                          check=False)
    return Result(call.argv, done.returncode, done.stdout, done.stderr, 0.0)


def runner() -> FakeRunner:
    return FakeRunner(answers={"openssl": host_openssl})


def tools(tmp: Path) -> Sandbox:
    return Sandbox(tmp / "tools")


def signed_pcrsig(key: Path, fingerprint: str, policies: list[bytes],
                  pcrs: list[int] | None = None, bank: str = "sha256") -> bytes:
    entries = []
    for policy in policies:
        sig = openssl("dgst", "-sha256", "-sign", str(key), data=policy)
        entries.append({"pcrs": pcrs or [11], "pkfp": fingerprint, "pol": policy.hex(),
                        "sig": base64.b64encode(sig).decode()})
    return json.dumps({bank: entries}).encode()


def uki(tmp: Path, keys: secureboot.SecureBootKeys, signature: bytes,
        public: str | None = None) -> Path:
    return tiny_pe(tmp / "hello.efi", {
        ".linux": b"K" * 600, ".pcrpkey": (public or keys.pcr_public_key()).encode(),
        ".pcrsig": signature})


POLICIES = [hashlib.sha256(phase).digest() for phase in (b"enter-initrd", b"leave-initrd")]


def test_the_key_set_has_a_pcr_key_whose_public_key_matches_openssl(
        keyset: secureboot.SecureBootKeys) -> None:
    assert keyset.has_pcr_key()
    assert oct(keyset.key(PCR).stat().st_mode & 0o777) == "0o600"
    public = openssl("x509", "-in", str(keyset.cert(PCR)), "-noout", "-pubkey").decode()
    assert keyset.pcr_public_key() == public
    # systemd's pkfp: SHA-256 of i2d_PublicKey, for RSA the PKCS#1 RSAPublicKey DER (found
    # when the first real .pcrsig named a key the SubjectPublicKeyInfo hash did not).
    der = openssl("rsa", "-pubin", "-RSAPublicKey_out", "-outform", "DER", data=public.encode())
    assert keyset.pcr_fingerprint() == hashlib.sha256(der).hexdigest()
    subject = openssl("x509", "-in", str(keyset.cert(PCR)), "-noout", "-subject").decode()
    assert "Hello PCR policy" in subject
    assert keyset.pcr_fingerprint() != hashlib.sha256(
        openssl("x509", "-in", str(keyset.db_cert), "-outform", "DER")).hexdigest()
    assert secureboot.load(keyset.directory).has_pcr_key()


def test_a_uki_signed_by_the_pcr_key_verifies(keyset: secureboot.SecureBootKeys,
                                              tmp_path: Path) -> None:
    signature = signed_pcrsig(keyset.key(PCR), keyset.pcr_fingerprint(), POLICIES)
    made = uki(tmp_path, keyset, signature)
    run = runner()
    found = pcrsig.verify(made, keyset, tools(tmp_path), run)
    assert [s.policy for s in found] == POLICIES
    assert all(s.pcrs == (11,) and s.bank == "sha256" for s in found)
    assert sum(c.program == "openssl" for c in run.calls) == 2


@pytest.mark.parametrize("case", ["other-key", "other-pkfp", "pcr7", "sha1", "tampered-pol",
                                  "other-pcrpkey", "empty"])
def test_a_uki_not_signed_for_pcr_11_by_the_key_is_refused(
        case: str, keyset: secureboot.SecureBootKeys, other: secureboot.SecureBootKeys,
        tmp_path: Path) -> None:
    fp = keyset.pcr_fingerprint()
    public = None
    if case == "other-key":  # signed by another key, claiming to be ours
        sig = signed_pcrsig(other.key(PCR), fp, POLICIES)
    elif case == "other-pkfp":
        sig = signed_pcrsig(other.key(PCR), other.pcr_fingerprint(), POLICIES)
    elif case == "pcr7":
        sig = signed_pcrsig(keyset.key(PCR), fp, POLICIES, pcrs=[7, 11])
    elif case == "sha1":
        sig = signed_pcrsig(keyset.key(PCR), fp, POLICIES, bank="sha1")
    elif case == "tampered-pol":
        doc = json.loads(signed_pcrsig(keyset.key(PCR), fp, POLICIES))
        doc["sha256"][1]["pol"] = hashlib.sha256(b"anything").hexdigest()
        sig = json.dumps(doc).encode()
    elif case == "other-pcrpkey":
        sig, public = signed_pcrsig(keyset.key(PCR), fp, POLICIES), other.pcr_public_key()
    else:
        sig = b'{"sha256": []}'
    with pytest.raises(VerifyFailed, match=r"hello\.efi"):
        pcrsig.verify(uki(tmp_path, keyset, sig, public), keyset, tools(tmp_path), runner())


def test_a_uki_without_the_sections_is_refused(keyset: secureboot.SecureBootKeys,
                                               tmp_path: Path) -> None:
    bare = tiny_pe(tmp_path / "bare.efi", {".linux": b"K" * 600})
    with pytest.raises(VerifyFailed, match=r"no \.pcrpkey section"):
        pcrsig.verify(bare, keyset, tools(tmp_path), runner())


@pytest.mark.parametrize(("data", "words"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not an object"),
    (b"{}", "not an object"),
    (b'{"sha256": {}}', "not a list"),
    (b'{"sha256": [{"pcrs": [11]}]}', "malformed"),
    (b'{"sha256": [{"pcrs": ["11"], "pkfp": "", "pol": "", "sig": ""}]}', "malformed"),
    (b'{"sha256": [{"pcrs": [true], "pkfp": "", "pol": "", "sig": ""}]}', "malformed"),
    (b'{"sha256": [{"pcrs": [11], "pkfp": "", "pol": "zz", "sig": ""}]}', "malformed"),
    (b'{"sha256": [{"pcrs": [11], "pkfp": "", "pol": "", "sig": "!!"}]}', "malformed"),
    (b" " * (pcrsig.SIG_MAX + 1), "not a signature list"),
])
def test_malformed_pcrsig_is_refused_by_name(data: bytes, words: str) -> None:
    with pytest.raises(VerifyFailed, match=words):
        pcrsig.parse_pcrsig(data, "u.efi")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["sha256", "pcrs", "pkfp", "pol", "sig"]),
                                      inner, max_size=5), max_leaves=12))
def test_any_json_parses_or_is_refused_cleanly(doc: object) -> None:
    try:
        found = pcrsig.parse_pcrsig(json.dumps(doc).encode(), "u.efi")
    except VerifyFailed:
        return
    assert all(isinstance(s.policy, bytes) for s in found)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_certificate_reading_refuses_garbage_with_value_errors_only(blob: bytes) -> None:
    with contextlib.suppress(ValueError):
        x509.spki(blob)


def test_a_given_pcr_key_is_used_and_must_match(keyset: secureboot.SecureBootKeys,
                                                tmp_path: Path) -> None:
    made = secureboot.generate(tmp_path / "own", "x", "hello", Runner(),
                               pcr_key=keyset.key(PCR), pcr_cert=keyset.cert(PCR))
    assert made.pcr_fingerprint() == keyset.pcr_fingerprint()
    assert made.db_fingerprint() != keyset.db_fingerprint()  # everything else is new
    with pytest.raises(ConfigError, match="not for this key") as err:
        secureboot.generate(tmp_path / "mixed", "x", "hello", Runner(),
                            pcr_key=keyset.db_key, pcr_cert=keyset.cert(PCR))
    assert err.value.field == "pcr_cert"
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(ConfigError, match="pcr key needs its certificate"):
        secureboot.generate(tmp_path / "half", "x", "hello", Runner(), pcr_cert=keyset.db_cert)


def test_key_sets_without_a_pcr_key_still_load_and_half_ones_are_refused(
        keyset: secureboot.SecureBootKeys, tmp_path: Path) -> None:
    older = tmp_path / "older"
    older.mkdir(mode=0o700)
    for name in ("db.key", "db.crt", "PK.auth", "KEK.auth", "db.auth"):
        (older / name).write_bytes((keyset.directory / name).read_bytes())
    assert not secureboot.load(older).has_pcr_key()
    (older / "pcr.key").write_bytes(keyset.key(PCR).read_bytes())
    with pytest.raises(ConfigError, match=r"no pcr\.crt"):
        secureboot.load(older)
    (older / "pcr.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM certificate") as err:
        secureboot.load(older)
    assert err.value.file == str(older / "pcr.crt")
    (older / "pcr.crt").write_bytes(keyset.cert(PCR).read_bytes())
    (older / "pcr.uri").write_text("pkcs11:token=t;object=pcr\n")
    with pytest.raises(ConfigError, match=r"both pcr\.key and pcr\.uri"):
        secureboot.load(older)
    os.unlink(older / "pcr.key")
    assert secureboot.load(older).has_pcr_key()


def test_inspect_reports_the_pcr_policy_of_each_uki(keyset: secureboot.SecureBootKeys,
                                                   tmp_path: Path) -> None:
    from appsdk.image.inspect import _sections, pcr_policy

    signature = signed_pcrsig(keyset.key(PCR), keyset.pcr_fingerprint(), POLICIES)
    good = tiny_pe(tmp_path / "a_1.efi", {".linux": b"K" * 600, ".pcrsig": signature})
    bad = tiny_pe(tmp_path / "b_1.efi", {".linux": b"K" * 600, ".pcrsig": b"garbage"})
    assert pcr_policy(good) == {"key_sha256": [keyset.pcr_fingerprint()], "pcrs": [11],
                                "banks": ["sha256"], "phases": 2}
    assert "not JSON" in pcr_policy(bad)["error"]
    (tmp_path / "d_1.efi").write_bytes(b"not a PE")
    assert _sections(tmp_path / "d_1.efi") == set()  # listed as unsigned, not a traceback
