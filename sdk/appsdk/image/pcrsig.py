"""Signed PCR policies in a UKI. ukify (through systemd-measure) predicts the PCR 11 value
systemd-stub and systemd-pcrphase will reach in each boot phase, and signs the TPM2 policy
digest of each with the PCR key (.pcrsig, JSON); the public key rides along (.pcrpkey).
A disk sealed to that public key (systemd-repart Encrypt=tpm2, systemd-cryptenroll
--tpm2-public-key) unlocks under any UKI the key signed, not only one exact kernel.

This module reads those sections back and checks them with a second implementation
(OpenSSL): every signature is over a policy digest, by the key set's PCR key, for PCR 11."""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import CommandFailed, VerifyFailed
from appsdk.core.runner import Runner
from appsdk.core.sandbox import Sandbox
from appsdk.image import pe
from appsdk.trust.secureboot import PCR, SecureBootKeys

PCR_UKI = 11  # systemd-stub measures the UKI's sections there; systemd-pcrphase the phases
BANK = "sha256"
SIG_MAX = 64 * 1024  # .pcrsig holds a few signatures of a few hundred bytes


@dataclass(frozen=True)
class PcrSignature:
    bank: str
    pcrs: tuple[int, ...]
    key_fingerprint: str  # "pkfp": SHA-256 of the public key's RSAPublicKey DER
    policy: bytes  # "pol": the TPM2 policy digest that was signed
    signature: bytes


def parse_pcrsig(data: bytes, where: str) -> tuple[PcrSignature, ...]:
    """The signatures of a .pcrsig section ({"sha256": [{"pcrs", "pkfp", "pol", "sig"}]}).
    Anything else is VerifyFailed naming `where`."""
    if len(data) > SIG_MAX:
        raise VerifyFailed(f"{where}: .pcrsig is {len(data)} bytes, not a signature list")
    try:
        doc = json.loads(data.rstrip(b"\0").decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerifyFailed(f"{where}: .pcrsig is not JSON ({exc})") from None
    if not isinstance(doc, dict) or not doc:
        raise VerifyFailed(f"{where}: .pcrsig is not an object of banks")
    found = []
    for bank, entries in doc.items():
        if not isinstance(entries, list):
            raise VerifyFailed(f"{where}: .pcrsig bank {bank!r} is not a list")
        for entry in entries:
            try:
                pcrs = entry["pcrs"]
                if not (isinstance(pcrs, list) and all(type(p) is int for p in pcrs)):
                    raise TypeError("pcrs")
                found.append(PcrSignature(
                    bank=str(bank), pcrs=tuple(pcrs), key_fingerprint=str(entry["pkfp"]),
                    policy=bytes.fromhex(entry["pol"]),
                    signature=base64.b64decode(entry["sig"], validate=True)))
            except (KeyError, TypeError, ValueError, binascii.Error) as exc:
                raise VerifyFailed(f"{where}: .pcrsig entry in {bank!r} is malformed "
                                   f"({type(exc).__name__}: {exc})") from None
    return tuple(found)


def verify(uki: Path, keys: SecureBootKeys, tools: Sandbox, runner: Runner,
           ) -> tuple[PcrSignature, ...]:
    """`uki` carries the key set's PCR public key and at least one signature, each for PCR 11
    in the sha256 bank, by that key, verifying with OpenSSL. Returns the signatures."""
    public = keys.pcr_public_key()
    carried = pe.read_section(uki, ".pcrpkey").rstrip(b"\0").decode(errors="replace")
    if carried.strip() != public.strip():
        raise VerifyFailed(f"{uki.name}: .pcrpkey is not the public key of "
                           f"{keys.cert(PCR)}")
    signatures = parse_pcrsig(pe.read_section(uki, ".pcrsig"), uki.name)
    if not signatures:
        raise VerifyFailed(f"{uki.name}: .pcrsig holds no signature")
    fingerprint = keys.pcr_fingerprint()
    with tempfile.TemporaryDirectory(prefix="appsdk-pcrsig-") as tmp:
        work = Path(tmp)
        (work / "pcr.pub").write_text(public)
        box = Sandbox(tools.tree, ro_binds=(work,))
        for index, sig in enumerate(signatures):
            if (sig.bank, sig.pcrs) != (BANK, (PCR_UKI,)):
                raise VerifyFailed(f"{uki.name}: .pcrsig signs PCRs {list(sig.pcrs)} in "
                                   f"{sig.bank}, not PCR {PCR_UKI} in {BANK}")
            if sig.key_fingerprint != fingerprint:
                raise VerifyFailed(f"{uki.name}: .pcrsig is by key {sig.key_fingerprint[:16]}"
                                   f"..., not the key set's PCR key {fingerprint[:16]}...")
            (work / f"{index}.pol").write_bytes(sig.policy)
            (work / f"{index}.sig").write_bytes(sig.signature)
            try:
                box.run(runner, ["openssl", "dgst", "-sha256", "-verify", f"{work}/pcr.pub",
                                 "-signature", f"{work}/{index}.sig", f"{work}/{index}.pol"],
                        timeout=60)
            except CommandFailed as exc:
                raise VerifyFailed(f"{uki.name}: a .pcrsig signature does not verify with "
                                   f"the PCR key:\n{exc.stderr.strip()}") from None
    return signatures
