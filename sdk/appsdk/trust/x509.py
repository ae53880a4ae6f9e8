"""The little of X.509 appsdk reads itself: a PEM certificate's DER, its
SubjectPublicKeyInfo, and the key in that (what systemd fingerprints as a PCR key's "pkfp")."""

from __future__ import annotations

import base64
import re
import textwrap


def pem_to_der(pem: str) -> bytes:
    match = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not match:
        raise ValueError("no PEM certificate")
    return base64.b64decode("".join(match.group(1).split()), validate=True)


def der_item(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER item at `at`."""
    if at + 2 > len(data):
        raise ValueError("DER cut short")
    tag, length = data[at], data[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    if start + length > len(data):
        raise ValueError("DER item past the end")
    return tag, start, start + length


def spki(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo (DER) of an X.509 certificate: Certificate ->
    tbsCertificate -> [version] serial signature issuer validity subject SPKI."""
    tag, start, _ = der_item(cert_der, 0)
    tag, at, _ = der_item(cert_der, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not an X.509 certificate")
    fields_seen = 0
    while True:
        tag, _, end = der_item(cert_der, at)
        if tag == 0xA0 and fields_seen == 0:  # explicit version, not counted
            at = end
            continue
        if fields_seen == 5:
            if tag != 0x30:
                raise ValueError("no SubjectPublicKeyInfo")
            return cert_der[at:end]
        fields_seen += 1
        at = end


def subject_public_key(spki_der: bytes) -> bytes:
    """The key itself: the BIT STRING of a SubjectPublicKeyInfo (for RSA, the PKCS#1
    RSAPublicKey DER, what OpenSSL's i2d_PublicKey writes and systemd fingerprints)."""
    _, start, _ = der_item(spki_der, 0)
    _, _, algorithm_end = der_item(spki_der, start)  # AlgorithmIdentifier
    tag, bits, end = der_item(spki_der, algorithm_end)
    if tag != 0x03 or bits >= end or spki_der[bits] != 0:
        raise ValueError("no public key BIT STRING")
    return spki_der[bits + 1:end]


def public_key_pem(cert_der: bytes) -> str:
    body = base64.b64encode(spki(cert_der)).decode()
    return ("-----BEGIN PUBLIC KEY-----\n" + "\n".join(textwrap.wrap(body, 64))
            + "\n-----END PUBLIC KEY-----\n")
