"""secure_boot: in appliance.yaml, through the build: what the spec accepts, what the ESP
carries, what the record says, and that the pipeline signs, checks and publishes only signed
EFI binaries (a FakeRunner plays systemd-sbsign and sbverify; the VM test boots the real
thing under OVMF with Secure Boot)."""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import subprocess
from pathlib import Path

import pytest
from test_pcrsig import OPENSSL, host_openssl
from test_pe import tiny_pe
from test_pipeline_fake import Project, Tools, make_project

from appsdk.contract.buildinfo import BUILD_JSON, load_build, load_record
from appsdk.core.errors import BuildError, ConfigError, VerifyFailed
from appsdk.core.runner import Call, FakeRunner, Result
from appsdk.pipeline.builder import build
from appsdk.pipeline.stages.esp import EspSecureBoot, build_esp_tree
from appsdk.spec.appliance import SecureBoot, load_appliance
from appsdk.spec.boards import load_board
from appsdk.trust import secureboot
from appsdk.trust.efivar import parse_authenticated

SIGNED = b"SIGNED-BY-DB:"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    return make_project(tmp_path, monkeypatch)


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "appliance.yaml").write_text("id: x\nversion: '1'\n" + text)
    return tmp_path


@pytest.mark.parametrize(("text", "expected"), [
    ("", None),
    ("secure_boot: false\n", None),
    ("secure_boot: true\n", SecureBoot()),
    ("secure_boot:\n  enroll: force\n", SecureBoot(enroll="force")),
])
def test_secure_boot_field(tmp_path: Path, text: str, expected: SecureBoot | None) -> None:
    assert load_appliance(write(tmp_path, text)).secure_boot == expected


def test_secure_boot_keys_are_relative_to_the_file_and_never_in_the_overlay(
        tmp_path: Path) -> None:
    app = load_appliance(write(tmp_path, "secure_boot:\n  keys: ../sb\n"))
    assert app.secure_boot == SecureBoot(keys=(tmp_path / "../sb").resolve())
    (tmp_path / "overlay/etc").mkdir(parents=True)
    with pytest.raises(ConfigError, match="inside the overlay") as err:
        load_appliance(write(tmp_path, "overlay: overlay\nsecure_boot:\n  keys: overlay/etc\n"))
    assert err.value.field == "secure_boot.keys"


@pytest.mark.parametrize(("text", "words"), [
    ("secure_boot: yes please\n", "must be true, false or a mapping"),
    ("secure_boot: 1\n", "must be true, false or a mapping"),
    ("secure_boot:\n  enroll: always\n", "not a systemd-boot enrollment mode"),
    ("secure_boot:\n  key: x\n", "key"),
])
def test_bad_secure_boot_fields_are_refused(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        load_appliance(write(tmp_path, text))
    assert "secure_boot" in str(err.value)


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> secureboot.SecureBootKeys:
    from appsdk.core.runner import Runner
    return secureboot.generate(tmp_path_factory.mktemp("sb") / "set", "Hello", "hello",
                               Runner())


def test_the_esp_carries_the_signed_loader_the_key_set_and_the_enroll_mode(
        tmp_path: Path, keyset: secureboot.SecureBootKeys) -> None:
    tree, uki = tmp_path / "tree", tmp_path / "hello_1.efi"
    uki.write_bytes(SIGNED + b"uki")
    loader = tmp_path / "signed-sd-boot.efi"
    loader.write_bytes(SIGNED + b"systemd-boot")
    esp = build_esp_tree(load_board("x86-uefi"), tree, uki, "hello", "1", tmp_path / "esp", 0,
                         secure_boot=EspSecureBoot(loader, {r: keyset.auth(r) for r in
                                                            secureboot.ROLES}, "if-safe"))
    root = esp.root
    for path in ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"):
        assert (root / path).read_bytes() == SIGNED + b"systemd-boot"
    for role in secureboot.ROLES:
        assert (root / f"loader/keys/auto/{role}.auth").read_bytes() == \
            keyset.auth(role).read_bytes()
    assert "secure-boot-enroll if-safe\n" in (root / "loader/loader.conf").read_text()
    assert not any("key" in name and name.endswith((".key", ".crt")) for name in esp.files)


class SbTools(Tools):
    """Tools, plus systemd-sbsign (run through faketime) and sbverify; ukify signs PCR
    policies as systemd-measure would (with the host's openssl, which also plays the tools
    tree's for the build's own check of them)."""

    verify_ok: bool = True
    pcr_pol: bytes = hashlib.sha256(b"enter-initrd").digest()

    def answers(self) -> dict[str, object]:  # type: ignore[override]
        return {**super().answers(), "faketime": self.faketime, "sbverify": self.sbverify,
                "openssl": host_openssl}

    def ukify(self, call: Call) -> Result:
        if "--pcr-private-key" not in " ".join(call.argv):
            return super().ukify(call)
        key, public = Path(call.arg("--pcr-private-key")), Path(call.arg("--pcrpkey"))
        if not (call.readable(key) and call.readable(public)):
            return call.fail("ukify: cannot read the PCR key")
        assert call.arg("--pcr-banks") == "sha256"
        der = subprocess.run([OPENSSL, "rsa", "-pubin", "-RSAPublicKey_out", "-outform", "DER",
                              "-in", str(public)], capture_output=True, check=True).stdout
        sig = subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", str(key)],
                             input=self.pcr_pol, capture_output=True, check=True).stdout
        doc = {"sha256": [{"pcrs": [11], "pkfp": hashlib.sha256(der).hexdigest(),
                           "pol": self.pcr_pol.hex(), "sig": base64.b64encode(sig).decode()}]}
        tiny_pe(Path(call.arg("--output")), {".linux": self.data("uki", 600),
                                              ".pcrpkey": public.read_bytes(),
                                              ".pcrsig": json.dumps(doc).encode()})
        return call.ok()

    def faketime(self, call: Call) -> Result:
        assert call.argv[1] == "-f" and call.argv[2] == "1970-01-01 00:00:00"
        sign = call.argv[3:]
        assert sign[0].endswith("systemd-sbsign") and sign[1] == "sign"
        inner = Call(argv=tuple(sign), wrapper=call.wrapper)
        key, cert = Path(inner.arg("--private-key")), Path(inner.arg("--certificate"))
        source = Path(sign[-1])
        if not (inner.readable(key) and inner.readable(cert) and inner.readable(source)):
            return call.fail("systemd-sbsign: cannot open")
        Path(inner.arg("--output")).write_bytes(SIGNED + source.read_bytes())
        return call.ok()

    def sbverify(self, call: Call) -> Result:
        ok = self.verify_ok and Path(call.argv[-1]).read_bytes().startswith(SIGNED)
        return call.ok("Signature verification OK") if ok else \
            call.fail("Signature verification failed")


def enable(project: Project, keyset: secureboot.SecureBootKeys) -> None:
    config = project.source / "appliance.yaml"
    config.write_text(config.read_text() + f"secure_boot:\n  keys: {keyset.directory}\n")


def test_a_secure_boot_build_publishes_only_signed_efi_binaries(
        project: Project, keyset: secureboot.SecureBootKeys) -> None:
    enable(project, keyset)
    result = project.build(SbTools("sb"))
    uki = result.artifacts["uki"].path.read_bytes()
    assert uki.startswith(SIGNED)
    assert lzma.decompress(result.artifacts["update-uki"].path.read_bytes()) == uki
    record = load_record(result.output)
    assert record.secure_boot is not None
    assert record.secure_boot.db_cert_sha256 == keyset.db_fingerprint()
    assert record.secure_boot.enroll == "if-safe"
    assert {f"loader/keys/auto/{r}.auth" for r in secureboot.ROLES} <= set(record.esp_files)
    raw = json.loads((result.output / BUILD_JSON).read_text())
    assert raw["secure_boot"]["db_cert_sha256"] == keyset.db_fingerprint()
    # The key set's PCR key signed the UKI's PCR 11 policy: the record names its key.
    assert raw["secure_boot"]["pcr_key_sha256"] == keyset.pcr_fingerprint()
    assert keyset.pcr_public_key().encode() in uki and b'"pcrs": [11]' in uki
    for role in secureboot.ROLES:  # what the ESP carries is the key set's payload
        parse_authenticated(keyset.auth(role).read_bytes())


def test_a_signature_that_does_not_verify_publishes_nothing(
        project: Project, keyset: secureboot.SecureBootKeys) -> None:
    enable(project, keyset)
    first = project.build(SbTools("one"))
    before = {p.name: p.read_bytes() for p in first.output.iterdir() if p.name != ".work"}
    tools = SbTools("two")
    tools.verify_ok = False
    with pytest.raises(BuildError, match="does not verify against"):
        project.build(tools)
    after = {p.name: p.read_bytes() for p in first.output.iterdir() if p.name != ".work"}
    assert after == before


def test_a_pcr_policy_that_does_not_verify_publishes_nothing(
        project: Project, keyset: secureboot.SecureBootKeys) -> None:
    enable(project, keyset)
    first = project.build(SbTools("one"))
    before = {p.name: p.read_bytes() for p in first.output.iterdir() if p.name != ".work"}

    class Forged(SbTools):  # the signature is over one policy, .pcrsig names another
        def ukify(self, call: Call) -> Result:
            done = super().ukify(call)
            out = Path(call.arg("--output"))
            out.write_bytes(out.read_bytes().replace(self.pcr_pol.hex().encode(),
                                                     bytes(32).hex().encode()))
            return done

    with pytest.raises(VerifyFailed, match="does not verify with the PCR key"):
        project.build(Forged("two"))
    after = {p.name: p.read_bytes() for p in first.output.iterdir() if p.name != ".work"}
    assert after == before


def test_a_key_set_without_a_pcr_key_builds_without_a_pcr_policy(
        project: Project, keyset: secureboot.SecureBootKeys, tmp_path: Path) -> None:
    older = tmp_path / "older-set"
    older.mkdir(mode=0o700)
    for name in ("db.key", "db.crt", "PK.auth", "KEK.auth", "db.auth", "PK.crt", "KEK.crt"):
        (older / name).write_bytes((keyset.directory / name).read_bytes())
    config = project.source / "appliance.yaml"
    config.write_text(config.read_text() + f"secure_boot:\n  keys: {older}\n")
    result = project.build(SbTools("old"))
    assert b"BEGIN PUBLIC KEY" not in result.artifacts["uki"].path.read_bytes()
    record = load_record(result.output)
    assert record.secure_boot is not None and record.secure_boot.pcr_key_sha256 is None


def test_a_secure_boot_build_without_a_key_set_fails_before_any_command(
        project: Project, tmp_path: Path) -> None:
    config = project.source / "appliance.yaml"
    config.write_text(config.read_text() + f"secure_boot:\n  keys: {tmp_path / 'none'}\n")
    runner = FakeRunner(answers=SbTools("x").answers())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no Secure Boot key set"):
        project.build(runner)
    assert runner.calls == [] or all(c.program in ("gpg", "gpgconf") for c in runner.calls)
    assert not (project.output / BUILD_JSON).exists()


def test_without_secure_boot_nothing_is_signed(project: Project) -> None:
    result = project.build(Tools("plain"))
    assert load_build(result.output)["secure_boot"] is None
    assert not result.artifacts["uki"].path.read_bytes().startswith(SIGNED)


def test_secure_boot_images_import_no_unsigned_credentials(tmp_path: Path) -> None:
    from appsdk.contract.layout import kernel_cmdline

    board = load_board("x86-uefi")
    plain = load_appliance(write(tmp_path, ""))
    signed = load_appliance(write(tmp_path, "secure_boot: true\n"))
    assert "systemd.import_credentials=no" not in kernel_cmdline(plain, board, "ab" * 32)
    assert "systemd.import_credentials=no" in kernel_cmdline(signed, board, "ab" * 32)


def test_a_key_set_for_an_image_without_secure_boot_is_refused(
        project: Project, keyset: secureboot.SecureBootKeys) -> None:
    from appsdk.cli import shown

    runner = FakeRunner(answers=Tools("x").answers())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not enable secure_boot") as err:
        build(project.source, output=project.output, runner=runner, key_dir=project.keys,
              secure_boot_keys=keyset.directory)
    assert "--secure-boot-keys" in shown(err.value)[0] + (shown(err.value)[1] or "")
    assert not (project.output / BUILD_JSON).exists()
