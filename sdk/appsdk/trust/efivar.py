"""UEFI Secure Boot variable payloads: EFI_SIGNATURE_LIST and the time-based authenticated
write (EFI_VARIABLE_AUTHENTICATION_2) that firmware accepts for PK, KEK and db, and that
systemd-boot enrolls from /loader/keys/<name>/*.auth (UEFI 2.10, 8.2.2 and 32.4.1).
Pure byte layout here; the PKCS#7 signature itself comes from openssl (trust.secureboot)."""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from dataclasses import dataclass

from appsdk.core.errors import ConfigError
from appsdk.trust.x509 import der_item

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")  # PK, KEK
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")  # db, dbx
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_TYPE_PKCS7 = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
WIN_CERT_REVISION = 0x0200

# NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
AUTH_ATTRIBUTES = 0x01 | 0x02 | 0x04 | 0x20

VENDOR = {"PK": EFI_GLOBAL_VARIABLE, "KEK": EFI_GLOBAL_VARIABLE,
          "db": EFI_IMAGE_SECURITY_DATABASE, "dbx": EFI_IMAGE_SECURITY_DATABASE}
SIGNED_BY = {"PK": "PK", "KEK": "PK", "db": "KEK", "dbx": "KEK"}  # who may write what


@dataclass(frozen=True)
class Variable:
    name: str  # PK, KEK, db, dbx

    @property
    def vendor(self) -> uuid.UUID:
        return VENDOR[self.name]


def signature_list(cert_der: bytes, owner: uuid.UUID) -> bytes:
    """One EFI_SIGNATURE_LIST holding one X.509 certificate (DER)."""
    if not cert_der.startswith(b"\x30"):
        raise ConfigError("a certificate for a signature list must be DER (a SEQUENCE)")
    entry = owner.bytes_le + cert_der
    header = struct.pack("<16sIII", EFI_CERT_X509.bytes_le, 28 + len(entry), 0, len(entry))
    return header + entry


def efi_time(when: dt.datetime) -> bytes:
    """EFI_TIME for an authenticated write: Pad1, Nanosecond, TimeZone, Daylight and Pad2
    must be zero (UEFI 8.2.2)."""
    when = when.astimezone(dt.UTC)
    if not 1900 <= when.year <= 9999:
        raise ConfigError(f"{when.year} cannot be an EFI_TIME year")
    return struct.pack("<HBBBBBBIhBB", when.year, when.month, when.day, when.hour,
                       when.minute, when.second, 0, 0, 0, 0, 0)


def signed_payload(var: Variable, timestamp: bytes, data: bytes) -> bytes:
    """What the PKCS#7 signature covers: name (UTF-16LE, no NUL) || vendor GUID ||
    attributes || timestamp || data."""
    return (var.name.encode("utf-16-le") + var.vendor.bytes_le
            + struct.pack("<I", AUTH_ATTRIBUTES) + timestamp + data)


def authenticated(timestamp: bytes, signed_data: bytes, data: bytes) -> bytes:
    """EFI_VARIABLE_AUTHENTICATION_2 followed by the new contents: what SetVariable() and
    systemd-boot's enrollment take. `signed_data` is a DER PKCS#7 SignedData."""
    cert_len = 4 + 2 + 2 + 16 + len(signed_data)  # WIN_CERTIFICATE_UEFI_GUID
    win_cert = struct.pack("<IHH16s", cert_len, WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID,
                           EFI_CERT_TYPE_PKCS7.bytes_le)
    return timestamp + win_cert + signed_data + data


SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2


def unwrap_content_info(der: bytes) -> bytes:
    """The SignedData inside a CMS ContentInfo (what `openssl cms -sign` writes). UEFI's
    CertData is the bare SignedData, as efitools and EDK2's own tools write it."""
    try:
        tag, start, end = der_item(der, 0)
        if tag != 0x30 or end != len(der) or der[start:start + len(SIGNED_DATA_OID)] \
                != SIGNED_DATA_OID:
            raise ValueError("not a ContentInfo of signedData")
        tag, inner, inner_end = der_item(der, start + len(SIGNED_DATA_OID))
        if tag != 0xA0 or inner_end != end:
            raise ValueError("no [0] content")
        tag, _, sd_end = der_item(der, inner)
        if tag != 0x30 or sd_end != inner_end:
            raise ValueError("content is not a SEQUENCE")
    except ValueError as exc:
        raise ConfigError(f"openssl's PKCS#7 signature cannot be read: {exc}") from None
    return der[inner:sd_end]


def parse_authenticated(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(timestamp, SignedData, data) of an .auth file; ValueError if it is not one."""
    if len(blob) < 16 + 24:
        raise ValueError("shorter than an EFI_VARIABLE_AUTHENTICATION_2 header")
    timestamp = blob[:16]
    length, revision, cert_type, guid = struct.unpack_from("<IHH16s", blob, 16)
    if revision != WIN_CERT_REVISION or cert_type != WIN_CERT_TYPE_EFI_GUID \
            or guid != EFI_CERT_TYPE_PKCS7.bytes_le:
        raise ValueError("not a PKCS#7 WIN_CERTIFICATE_UEFI_GUID")
    if length < 24 or 16 + length > len(blob):
        raise ValueError("certificate length out of range")
    return timestamp, blob[16 + 24:16 + length], blob[16 + length:]


def parse_signature_lists(data: bytes) -> list[tuple[uuid.UUID, bytes]]:
    """(owner, X.509 DER) of every entry of a chain of EFI_SIGNATURE_LISTs holding X.509
    certificates; ValueError on anything else."""
    out: list[tuple[uuid.UUID, bytes]] = []
    at = 0
    while at < len(data):
        if at + 28 > len(data):
            raise ValueError("signature list header truncated")
        kind, size, header_size, entry_size = struct.unpack_from("<16sIII", data, at)
        if kind != EFI_CERT_X509.bytes_le:
            raise ValueError("not an X.509 signature list")
        if size < 28 + header_size or at + size > len(data) or entry_size <= 16 \
                or (size - 28 - header_size) % entry_size:
            raise ValueError("signature list sizes do not add up")
        entries = at + 28 + header_size
        for off in range(entries, at + size, entry_size):
            out.append((uuid.UUID(bytes_le=data[off:off + 16]), data[off + 16:off + entry_size]))
        at += size
    return out
