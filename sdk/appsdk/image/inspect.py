"""`appsdk inspect`: what a disk image holds, read from the image itself: the GPT (parsed
by gpt.py), the ESP's files (copied out with mtools, no mount), the UKI's command line and
os-release, systemd-boot's version, and the firmware versions appsdk recorded on the ESP."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from appsdk.contract.esprecord import FIRMWARE_RECORD, parse_firmware_record
from appsdk.core.digest import sha256_file
from appsdk.core.errors import VerifyFailed
from appsdk.core.runner import Runner
from appsdk.image import gpt


def read_gpt(image: Path) -> dict[str, Any]:
    """The GPT (both copies checked, see gpt.py) as inspect reports it."""
    return gpt.read(image).as_dict()


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


def signers(binary: Path, runner: Runner) -> list[str]:
    """The subjects of the certificates in each Authenticode signature of `binary`, as
    openssl prints them ("CN = ..."); [] if it is unsigned."""
    from appsdk.image import pe

    names = []
    for der in pe.signatures(binary):
        with tempfile.NamedTemporaryFile(suffix=".p7") as sig:
            sig.write(der)
            sig.flush()
            done = runner.run([runner.which("openssl"), "pkcs7", "-inform", "DER", "-in",
                               sig.name, "-print_certs", "-noout"], check=False)
        subjects = [line.split("=", 1)[1].strip() for line in done.stdout.splitlines()
                    if line.startswith("subject=")]
        names.append(", ".join(subjects) if done.returncode == 0 and subjects
                     else "(unreadable signature)")
    return names


def secure_boot_info(esp: Path, runner: Runner) -> dict[str, Any]:
    """Who signed each EFI binary on the ESP (read from the binaries: a signature by the
    wrong key shows here), and which enrollment key sets it carries."""
    binaries = sorted(p for p in esp.rglob("*") if p.is_file() and p.suffix.lower() == ".efi")
    keys = esp / "loader/keys"
    return {
        "signed": {p.relative_to(esp).as_posix(): signers(p, runner) for p in binaries},
        "enroll_keys": sorted(d.name for d in keys.iterdir() if d.is_dir())
        if keys.is_dir() else [],
        "pcr_policy": {p.relative_to(esp).as_posix(): pcr_policy(p) for p in binaries
                       if ".pcrsig" in _sections(p)},
    }


def _sections(binary: Path) -> set[str]:
    from appsdk.image import pe

    try:
        return set(pe.sections(binary))
    except VerifyFailed:
        return set()


def pcr_policy(uki: Path) -> dict[str, Any]:
    """What a UKI's .pcrsig says (read, not verified: that needs the key set): by which
    key, for which PCRs, for how many boot phases."""
    from appsdk.image import pcrsig, pe

    try:
        found = pcrsig.parse_pcrsig(pe.read_section(uki, ".pcrsig"), uki.name)
    except VerifyFailed as exc:
        return {"error": str(exc)}
    return {"key_sha256": sorted({s.key_fingerprint for s in found}),
            "pcrs": sorted({p for s in found for p in s.pcrs}),
            "banks": sorted({s.bank for s in found}), "phases": len(found)}


def inspect(target: Path, runner: Runner | None = None) -> dict[str, Any]:
    from appsdk.contract.buildinfo import locate_build
    from appsdk.image import pe

    runner = runner or Runner()
    image, record = locate_build(target)
    gpt = read_gpt(image)
    esp = next((p for p in gpt["partitions"] if p["type"] == "esp"), None)
    if esp is None:
        raise VerifyFailed(f"{image}: no EFI system partition")
    info: dict[str, Any] = {
        "image": str(image), "image_size": image.stat().st_size,
        "board": record.board.name if record else None,
        "firmware_chain": record.board.firmware_chain if record else None,
        **gpt, "esp_files": [], "firmware": {}, "id": None, "version": None,
        "cmdline": None, "systemd_boot": None, "secure_boot": None,
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
        info["secure_boot"] = secure_boot_info(root, runner)
        record_file = root / FIRMWARE_RECORD
        if record_file.is_file():
            # The image's bytes, any. A bare image (no build.json) still names its board
            # and chain on the ESP.
            found = parse_firmware_record(record_file.read_text(errors="replace"))
            info["board"] = info["board"] or found.board
            info["firmware_chain"] = info["firmware_chain"] or found.chain
            for pin in found.pins:
                info["firmware"][pin.name] = {"version": pin.version, "sha256": pin.sha256}
    return info
