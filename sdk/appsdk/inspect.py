"""`appsdk inspect`: what a disk image holds, read from the image itself: the GPT (parsed
here), the ESP's files (copied out with mtools, no mount), the UKI's command line and
os-release, systemd-boot's version, and the firmware versions appsdk recorded on the ESP."""

from __future__ import annotations

import re
import struct
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any

from .digest import sha256_file
from .errors import VerifyFailed
from .runner import Runner

SECTOR = 512
# Discoverable Partitions Specification type GUIDs appsdk images use.
PART_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "esp",
    "8484680c-9521-48c6-9c11-b0720656f69e": "usr-x86-64",
    "77ff5f63-e7b6-4633-acf4-1565b864c0e6": "usr-x86-64-verity",
    "b0e01050-ee5f-4390-949a-9101b17104e9": "usr-arm64",
    "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e": "usr-arm64-verity",
    "4d21b016-b534-45c2-a9fb-5c16e091fd2d": "var",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "linux-generic",
}
FIRMWARE_RECORD = "appsdk-firmware.txt"  # on rpi ESPs: component, version, sha256


def read_gpt(image: Path) -> dict[str, Any]:
    """The primary GPT, with header and entry-array CRCs checked."""
    with image.open("rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        if header[:8] != b"EFI PART":
            raise VerifyFailed(f"{image}: no GPT header at LBA 1 (not a disk image?)")
        size = struct.unpack_from("<I", header, 12)[0]
        crc = struct.unpack_from("<I", header, 16)[0]
        check = bytearray(header[:size])
        check[16:20] = b"\0\0\0\0"
        if zlib.crc32(bytes(check)) != crc:
            raise VerifyFailed(f"{image}: GPT header checksum mismatch")
        disk_guid = str(uuid.UUID(bytes_le=header[56:72]))
        entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    if zlib.crc32(table) != entries_crc:
        raise VerifyFailed(f"{image}: GPT partition entries checksum mismatch")
    parts = []
    for i in range(count):
        e = table[i * entry_size:(i + 1) * entry_size]
        if e[:16] == bytes(16):
            continue
        type_guid = str(uuid.UUID(bytes_le=e[:16]))
        first, last = struct.unpack_from("<QQ", e, 32)
        parts.append({
            "number": i + 1,
            "label": e[56:128].decode("utf-16-le").rstrip("\0"),
            "type": PART_TYPES.get(type_guid, type_guid),
            "uuid": str(uuid.UUID(bytes_le=e[16:32])),
            "offset": first * SECTOR,
            "size": (last - first + 1) * SECTOR,
        })
    return {"disk_guid": disk_guid, "partitions": parts}


def esp_tree(image: Path, offset: int, target: Path, runner: Runner) -> None:
    runner.run(["mcopy", "-s", "-n", "-m", "-i", f"{image}@@{offset}", "::/", str(target)],
               env={"MTOOLS_SKIP_CHECK": "1"})


def _osrel(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value.strip().strip('"')
    return out


def inspect(target: Path, runner: Runner | None = None) -> dict[str, Any]:
    from . import pe
    from .buildinfo import locate_image

    runner = runner or Runner()
    image, record = locate_image(target)
    gpt = read_gpt(image)
    esp = next((p for p in gpt["partitions"] if p["type"] == "esp"), None)
    if esp is None:
        raise VerifyFailed(f"{image}: no EFI system partition")
    info: dict[str, Any] = {
        "image": str(image), "image_size": image.stat().st_size,
        "board": record["board"]["name"] if record else None,
        "firmware_chain": record["board"].get("firmware_chain") if record else None,
        **gpt, "esp_files": [], "firmware": {}, "id": None, "version": None,
        "cmdline": None, "systemd_boot": None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "esp"
        root.mkdir()
        esp_tree(image, esp["offset"], root, runner)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            info["esp_files"].append({
                "path": path.relative_to(root).as_posix(), "size": path.stat().st_size,
                "sha256": sha256_file(path)})
        ukis = sorted((root / "EFI/Linux").glob("*.efi")) if (root / "EFI/Linux").is_dir() \
            else []
        if ukis:
            uki = ukis[-1]
            info["uki"] = uki.name
            info["cmdline"] = pe.read_text(uki, ".cmdline").strip()
            osrel = _osrel(pe.read_text(uki, ".osrel"))
            info["id"], info["version"] = osrel.get("IMAGE_ID"), osrel.get("IMAGE_VERSION")
        for boot in sorted((root / "EFI/systemd").glob("systemd-boot*.efi")) \
                if (root / "EFI/systemd").is_dir() else []:
            magic = pe.read_text(boot, ".sdmagic")
            info["systemd_boot"] = magic.replace("#### LoaderInfo:", "").strip(" #")
        record_file = root / FIRMWARE_RECORD
        if record_file.is_file():
            text = record_file.read_text()
            # A bare image (no build.json) still names its board and chain on the ESP.
            head = re.match(r"# appsdk: firmware on this ESP \(([\w.-]+), ([\w+.-]+)\)", text)
            if head:
                info["board"] = info["board"] or head.group(1)
                info["firmware_chain"] = info["firmware_chain"] or head.group(2)
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and not line.startswith("#"):
                    info["firmware"][parts[0]] = {"version": parts[1], "sha256": parts[2]}
    return info
