"""An appliance's UEFI Secure Boot key set: PK, KEK and db (X.509 certificate + private key
each) and the signed enrollment payloads PK.auth, KEK.auth, db.auth that systemd-boot
writes into a machine in setup mode. The db key signs every EFI binary the device runs;
PK and KEK only ever sign variable updates, so they can live offline after this.

Layout of a key set directory (mode 0700, private keys 0600):
    PK.key PK.crt KEK.key KEK.crt db.key db.crt   PEM
    PK.auth KEK.auth db.auth                      EFI_VARIABLE_AUTHENTICATION_2 + ESL
    db.uri                                        instead of db.key: the db key is in an
                                                  HSM, named by this PKCS#11 URI
    pcr.key pcr.crt (or pcr.uri pcr.crt)          the PCR key: signs each UKI's expected
                                                  PCR 11 values (.pcrsig), so the TPM can
                                                  unseal /var for any UKI it signed (made
                                                  with the set since stop 16; optional)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import AppsdkError, CommandFailed, ConfigError, Option, ToolMissing
from appsdk.core.runner import Runner
from appsdk.core.sandbox import Sandbox
from appsdk.spec import fields
from appsdk.spec.appliance import Appliance
from appsdk.trust import efivar, keys, pkcs11, x509
from appsdk.trust.keydir import prepare_dir, undo_dir

ROLES = ("PK", "KEK", "db")  # the enrolled keys
PCR = "pcr"  # the PCR policy key: never enrolled, only its public key rides in each UKI
SUBDIR = "secure-boot"  # the key set's place in an appliance's key directory
RSA_BITS = 2048  # what every UEFI implementation must verify (UEFI 2.10, 32.2.6)
VALID_DAYS = 30 * 365  # firmware does not check expiry; a device outlives most certificates
# The owner GUID in our signature lists: derived from the appliance id, so a key set made
# twice for one appliance names the same owner.
OWNER_NAMESPACE = uuid.UUID("6b3e0f52-5f0e-4c5e-9a59-6170707364bb")


@dataclass(frozen=True)
class SecureBootKeys:
    directory: Path

    def cert(self, role: str) -> Path:
        return self.directory / f"{role}.crt"

    def key(self, role: str) -> Path:
        return self.directory / f"{role}.key"

    def auth(self, role: str) -> Path:
        return self.directory / f"{role}.auth"

    @property
    def db_cert(self) -> Path:
        return self.cert("db")

    @property
    def db_key(self) -> Path:
        return self.key("db")

    @property
    def db_uri(self) -> Path:
        return self.uri("db")

    def uri(self, role: str) -> Path:
        return self.directory / f"{role}.uri"

    def signer(self, role: str) -> Path | pkcs11.Pkcs11Key:
        """What signs for `role`: its PEM file, or the PKCS#11 URI of `role`.uri."""
        uri = self.uri(role)
        if uri.is_file():
            return pkcs11.parse_uri(uri.read_text(encoding="utf-8").strip(),
                                    field=uri.name, file=str(uri))
        return self.key(role)

    def db_signer(self) -> Path | pkcs11.Pkcs11Key:
        return self.signer("db")

    def db_fingerprint(self) -> str:
        """SHA-256 of the db certificate (DER): what a build records as its signer."""
        return hashlib.sha256(x509.pem_to_der(self.db_cert.read_text())).hexdigest()

    def has_pcr_key(self) -> bool:
        return self.cert(PCR).is_file()

    def pcr_public_key(self) -> str:
        """The PCR key's public key (PEM SubjectPublicKeyInfo), read from pcr.crt: what goes
        into each UKI's .pcrpkey section and what the TPM policy is bound to."""
        return x509.public_key_pem(x509.pem_to_der(self.cert(PCR).read_text()))

    def pcr_fingerprint(self) -> str:
        """The "pkfp" systemd writes into .pcrsig: SHA-256 of the key as i2d_PublicKey
        encodes it (RSAPublicKey DER, not the SubjectPublicKeyInfo)."""
        der = x509.pem_to_der(self.cert(PCR).read_text())
        return hashlib.sha256(x509.subject_public_key(x509.spki(der))).hexdigest()


def directory_for(app: Appliance, key_dir: Path | None = None,
                  override: Path | None = None) -> Path:
    """Where `app`'s key set is: `override` (never inside the overlay, which is imaged),
    else secure_boot.keys of appliance.yaml (checked where it was read), else `secure-boot/`
    in the update key's directory (`key_dir`, or its default)."""
    if override is not None:
        return fields.key_dir(str(override), Option("secure_boot_keys"), base=Path.cwd(),
                              overlay=app.overlay)
    if app.secure_boot is not None and app.secure_boot.keys is not None:
        return app.secure_boot.keys
    return keys.home_for(app, key_dir) / SUBDIR


def _subject(name: str, role: str) -> str:
    # -subj has its own escapes (/ = + ,); a display name needs none of them.
    safe = re.sub(r"[^A-Za-z0-9 ._-]", "_", name).strip() or "appliance"
    return f"/CN={safe[:40]} " + ("PCR policy" if role == PCR else f"Secure Boot {role}")


def _openssl(runner: Runner) -> str:
    try:
        return runner.which("openssl")
    except ToolMissing as exc:
        raise ToolMissing(f"cannot make Secure Boot keys: {exc}",
                          hint="apt-get install openssl") from None


def generate(directory: Path, name: str, app_id: str, runner: Runner, *,
             db_key: Path | pkcs11.Pkcs11Key | None = None, db_cert: Path | None = None,
             pcr_key: Path | pkcs11.Pkcs11Key | None = None, pcr_cert: Path | None = None,
             when: dt.datetime | None = None, hsm: Sandbox | None = None) -> SecureBootKeys:
    """A new key set in `directory` (made here, or an empty private one). `db_key` and
    `db_cert`: a db key the product team already has (both or neither), a PEM file or a key
    in an HSM (PKCS#11 URI; `hsm` is the sandbox with OpenSSL's pkcs11 provider, the tools
    tree); PK and KEK are made around it. `pcr_key` and `pcr_cert` likewise for the PCR
    key. `when`: the enrollment payloads' timestamp (default: now, or SOURCE_DATE_EPOCH)."""
    given = {"db": (db_key, db_cert), PCR: (pcr_key, pcr_cert)}
    for role, (key, cert) in given.items():
        if (key is None) != (cert is None):
            raise ConfigError(f"a {role} key needs its certificate, and a certificate its key",
                              field=Option(f"{role}_key" if key is None else f"{role}_cert"),
                              hint=f"give both, or neither to have appsdk make a {role} key")
    openssl = _openssl(runner)
    created = prepare_dir(directory, markers=("PK.key", "db.crt"), what="a Secure Boot key set",
                          option=Option("keys"))
    keyset = SecureBootKeys(directory)
    try:
        for role in (*ROLES, PCR):
            key, cert = given.get(role, (None, None))
            if isinstance(key, pkcs11.Pkcs11Key) and cert is not None:
                _import_uri(keyset, role, key, cert, hsm, runner)
                continue
            if isinstance(key, Path) and cert is not None:
                _import_files(keyset, role, key, cert, openssl, runner)
                continue
            runner.run([openssl, "req", "-new", "-x509", "-newkey", f"rsa:{RSA_BITS}",
                        "-nodes", "-sha256", "-days", str(VALID_DAYS),
                        "-subj", _subject(name, role),
                        "-keyout", str(keyset.key(role)), "-out", str(keyset.cert(role))])
            os.chmod(keyset.key(role), 0o600)
        write_enrollment(keyset, app_id, runner, when)
    except BaseException as exc:
        undo_dir(directory, created)
        if isinstance(exc, CommandFailed):
            raise AppsdkError(f"openssl could not make the Secure Boot key set in {directory}:"
                              f"\n{exc.stderr.strip()}",
                              hint="check that openssl works (openssl version)") from None
        raise
    return keyset


def _import_files(keyset: SecureBootKeys, role: str, key: Path, cert: Path, openssl: str,
                  runner: Runner) -> None:
    """Copy a given key and certificate in, after checking they belong together."""
    for path, flag in ((key, f"{role}_key"), (cert, f"{role}_cert")):
        if not path.is_file():
            raise ConfigError("no such file", file=str(path), field=Option(flag))
    try:
        cert_pub = runner.run([openssl, "x509", "-noout", "-pubkey", "-in", str(cert)]).stdout
        key_pub = runner.run([openssl, "pkey", "-pubout", "-in", str(key)]).stdout
    except CommandFailed as exc:
        raise ConfigError(f"not a PEM key or certificate openssl can read:\n{exc.stderr.strip()}",
                          file=str(cert), field=Option(f"{role}_cert"),
                          hint=f"give the {role} certificate and its private key in PEM") from None
    if cert_pub.strip() != key_pub.strip():
        raise ConfigError("the certificate is not for this key", file=str(cert),
                          field=Option(f"{role}_cert"),
                          hint=f"give the certificate of --{role}-key")
    shutil.copyfile(cert, keyset.cert(role))
    fd = os.open(keyset.key(role), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.read_bytes())


def _import_uri(keyset: SecureBootKeys, role: str, key: pkcs11.Pkcs11Key, cert: Path,
                hsm: Sandbox | None, runner: Runner) -> None:
    """Record a key held in an HSM (`role`.uri), after proving with the token that it is the
    key of `cert`: a challenge signed there verifies with the certificate's public key."""
    if hsm is None:
        raise ConfigError("a PKCS#11 key needs the tools tree (OpenSSL's pkcs11 provider)",
                          field=Option(f"{role}_key"))
    if not cert.is_file():
        raise ConfigError("no such file", file=str(cert), field=Option(f"{role}_cert"))
    with pkcs11.provider_env(key) as provider, \
            tempfile.TemporaryDirectory(prefix="appsdk-hsm-") as tmp:
        work = Path(tmp)
        shutil.copyfile(cert, work / "key.crt")
        (work / "challenge").write_bytes(os.urandom(32))
        box = Sandbox(hsm.tree, binds=(work, *provider.rw), ro_binds=provider.ro)
        steps = (
            ["openssl", "x509", "-noout", "-pubkey", "-in", f"{work}/key.crt",
             "-out", f"{work}/key.pub"],
            ["openssl", "dgst", "-sha256", "-sign", key.uri, "-out", f"{work}/challenge.sig",
             f"{work}/challenge"],
            ["openssl", "dgst", "-sha256", "-verify", f"{work}/key.pub", "-signature",
             f"{work}/challenge.sig", f"{work}/challenge"],
        )
        for step, what in zip(steps, ("read the certificate", "sign with the key in the HSM",
                                      "verify that signature with the certificate"), strict=True):
            try:
                box.run(runner, step, env=provider.env, timeout=120)
            except CommandFailed as exc:
                mismatch = what.startswith("verify")
                raise ConfigError(
                    "the certificate is not for this key" if mismatch else
                    f"cannot {what} ({key.redacted}):\n"
                    f"{exc.stderr.strip() or f'openssl exited with status {exc.returncode}'}",
                    file=str(cert) if mismatch or what.startswith("read") else None,
                    field=Option(f"{role}_cert" if mismatch else f"{role}_key"),
                    hint=f"give the certificate of --{role}-key" if mismatch else
                    "check the URI, the token's PIN and that the token is present "
                    f"(${pkcs11.BIND_ENV} lists what its module needs)") from None
    shutil.copyfile(cert, keyset.cert(role))
    fd = os.open(keyset.uri(role), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # may hold a PIN
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key.uri + "\n")


def write_enrollment(keyset: SecureBootKeys, app_id: str, runner: Runner,
                     when: dt.datetime | None = None) -> None:
    """PK.auth (signed by PK itself), KEK.auth (by PK) and db.auth (by KEK)."""
    openssl = _openssl(runner)
    if when is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = (dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch
                else dt.datetime.now(dt.UTC).replace(microsecond=0))
    stamp = efivar.efi_time(when)
    owner = uuid.uuid5(OWNER_NAMESPACE, app_id)
    with tempfile.TemporaryDirectory(prefix="appsdk-sb-") as tmp:
        for role in ROLES:
            der = x509.pem_to_der(keyset.cert(role).read_text())
            data = efivar.signature_list(der, owner)
            payload = Path(tmp) / f"{role}.payload"
            payload.write_bytes(efivar.signed_payload(efivar.Variable(role), stamp, data))
            signer = efivar.SIGNED_BY[role]
            signature = Path(tmp) / f"{role}.p7"
            runner.run([openssl, "cms", "-sign", "-binary", "-noattr", "-md", "sha256",
                        "-signer", str(keyset.cert(signer)), "-inkey", str(keyset.key(signer)),
                        "-outform", "DER", "-in", str(payload), "-out", str(signature)])
            signed = efivar.unwrap_content_info(signature.read_bytes())
            keyset.auth(role).write_bytes(efivar.authenticated(stamp, signed, data))


def load(directory: Path) -> SecureBootKeys:
    """The key set in `directory`, with what a build needs of it: the db key and
    certificate, and the three enrollment payloads."""
    keyset = SecureBootKeys(directory)
    if not directory.is_dir():
        raise ConfigError("no Secure Boot key set", file=str(directory),
                          hint="create one with `appsdk keys secure-boot`",
                          remedy=Option("secure_boot_keys"))
    if keyset.db_key.exists() and keyset.db_uri.exists():
        raise ConfigError("the key set has both db.key and db.uri: which db key signs?",
                          file=str(directory), hint="remove the one that is not the db key")
    db = keyset.db_uri if keyset.db_uri.exists() else keyset.db_key
    missing = [p.name for p in (db, keyset.db_cert,
                                *(keyset.auth(r) for r in ROLES)) if not p.is_file()]
    if missing:
        raise ConfigError(f"Secure Boot key set incomplete: no {', '.join(missing)}",
                          file=str(directory), hint="make the key set again with "
                          "`appsdk keys secure-boot` (into a new directory)")
    try:
        keyset.db_fingerprint()
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("is not a PEM certificate", file=str(keyset.db_cert)) from None
    try:
        keyset.db_signer()
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8", file=str(keyset.db_uri)) from None
    _check_pcr(keyset)
    for role in ROLES:
        try:
            _, _, data = efivar.parse_authenticated(keyset.auth(role).read_bytes())
            efivar.parse_signature_lists(data)
        except ValueError as exc:
            raise ConfigError(f"is not an enrollment payload: {exc}",
                              file=str(keyset.auth(role)),
                              hint="make the key set again with `appsdk keys secure-boot`") \
                from None
    return keyset


def _check_pcr(keyset: SecureBootKeys) -> None:
    """The PCR key is optional (key sets from before it have none), but what is there must
    be whole: one private key (file or URI) and its certificate."""
    key, uri, cert = keyset.key(PCR), keyset.uri(PCR), keyset.cert(PCR)
    if key.exists() and uri.exists():
        raise ConfigError("the key set has both pcr.key and pcr.uri: which PCR key signs?",
                          file=str(keyset.directory), hint="remove the one that is not it")
    if (key.exists() or uri.exists()) != cert.exists():
        raise ConfigError("PCR key incomplete: " + ("no pcr.crt" if not cert.exists()
                                                    else "no pcr.key or pcr.uri"),
                          file=str(keyset.directory),
                          hint="make the key set again with `appsdk keys secure-boot`")
    if not cert.exists():
        return
    try:
        keyset.pcr_fingerprint()
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("is not a PEM certificate", file=str(cert)) from None
    try:
        keyset.signer(PCR)
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8", file=str(uri)) from None


def write_vars(keyset: SecureBootKeys, app_id: str, template: Path, output: Path,
               runner: Runner) -> Path:
    """A UEFI variable store (edk2 format: OVMF, AAVMF) made from `template` with PK, KEK
    and db of the key set enrolled and Secure Boot on: a machine that starts from it
    enforces Secure Boot on its first boot, with no enrollment. virt-fw-vars (PyPI
    virt-firmware) writes the store; the signature lists hold the same owner GUID as the
    .auth payloads. Written to a temporary name and renamed: never half a store."""
    try:
        tool = runner.which("virt-fw-vars")
    except ToolMissing:
        raise ToolMissing("virt-fw-vars not found (it writes UEFI variable stores)",
                          hint="pip install virt-firmware") from None
    if not template.is_file():
        raise ConfigError("no such UEFI variable store", file=str(template),
                          field=Option("template"), hint="apt-get install ovmf (x86) or "
                          "qemu-efi-aarch64 (arm64), or give the store to start from")
    owner = str(uuid.uuid5(OWNER_NAMESPACE, app_id))
    partial = output.with_name(f".{output.name}.partial")
    try:
        runner.run([tool, "--input", str(template), "--output", str(partial),
                    "--set-pk", owner, str(keyset.cert("PK")),
                    "--add-kek", owner, str(keyset.cert("KEK")),
                    "--add-db", owner, str(keyset.db_cert), "--secure-boot"], timeout=120)
        os.replace(partial, output)
    except CommandFailed as exc:
        raise AppsdkError(f"virt-fw-vars could not write {output}:\n{exc.stderr.strip()}",
                          hint="is the template an edk2 variable store (OVMF_VARS*.fd, "
                          "AAVMF_VARS.fd)?") from None
    finally:
        partial.unlink(missing_ok=True)
    return output
