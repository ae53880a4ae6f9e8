"""Firmware manifests: verification before use, offline directories, ELF sanity checks.
Packages are built here with dpkg-deb, so nothing touches the network."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from appsdk.core.errors import AppsdkError, ConfigError
from appsdk.spec.firmware import FirmwareMismatch, check_elf, fetch, load_manifest, load_manifests

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")

ELF = Path("/bin/true")  # any real ELF binary stands in for a firmware ELF


def build_deb(tmp: Path, name: str, payload: dict[str, bytes]) -> Path:
    root = tmp / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    for path, data in payload.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    deb = tmp / "offline" / f"{name}_1.0_all.deb"
    deb.parent.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def manifest(tmp: Path, name: str, deb: Path, sha: str | None = None) -> Path:
    sha = sha or hashlib.sha256(deb.read_bytes()).hexdigest()
    path = tmp / "manifests" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"name: {name}\nversion: '1.0'\n"
                    f"debian: pool/main/t/{name}/{deb.name}\nsha256: {sha}\n"
                    "files:\n  start.elf: usr/lib/fw/start.elf\n  cfg.dat: usr/lib/fw/cfg.dat\n"
                    "elf: [start.elf]\n")
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("APPSDK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("APPSDK_FIRMWARE_DIR", raising=False)
    return tmp_path / "cache"


def test_offline_directory_is_verified_and_unpacked(tmp_path: Path, cache: Path) -> None:
    deb = build_deb(tmp_path, "fw", {"usr/lib/fw/start.elf": ELF.read_bytes(),
                                     "usr/lib/fw/cfg.dat": b"cfg"})
    m = load_manifest(manifest(tmp_path, "fw", deb))
    out = fetch(["fw"], offline=deb.parent, manifests={"fw": m})["fw"]
    assert (out / "cfg.dat").read_bytes() == b"cfg"
    assert (out / "start.elf").read_bytes() == ELF.read_bytes()
    # Second time from the cache: the offline directory is not needed any more.
    deb.unlink()
    assert fetch(["fw"], offline=deb.parent, manifests={"fw": m})["fw"] == out


def test_a_file_added_to_a_manifest_is_unpacked_from_the_cached_package(
        tmp_path: Path, cache: Path) -> None:
    """A manifest that names one more file of the same package (as qemu-efi-aarch64 gained
    AAVMF_CODE.secboot.fd) must not find an old unpacked cache 'complete' without it."""
    deb = build_deb(tmp_path, "fw", {"usr/lib/fw/start.elf": ELF.read_bytes(),
                                     "usr/lib/fw/cfg.dat": b"cfg",
                                     "usr/lib/fw/more.dat": b"more"})
    path = manifest(tmp_path, "fw", deb)
    out = fetch(["fw"], offline=deb.parent, manifests={"fw": load_manifest(path)})["fw"]
    assert not (out / "more.dat").exists()
    path.write_text(path.read_text().replace("\nelf:", "\n  more.dat: usr/lib/fw/more.dat\nelf:"))
    again = fetch(["fw"], offline=deb.parent, manifests={"fw": load_manifest(path)})["fw"]
    assert (again / "more.dat").read_bytes() == b"more"


def test_sha256_mismatch_is_refused_with_both_hashes(tmp_path: Path, cache: Path) -> None:
    deb = build_deb(tmp_path, "fw", {"usr/lib/fw/start.elf": ELF.read_bytes(),
                                     "usr/lib/fw/cfg.dat": b"cfg"})
    pinned = "ab" * 32
    m = load_manifest(manifest(tmp_path, "fw", deb, sha=pinned))
    with pytest.raises(FirmwareMismatch) as err:
        fetch(["fw"], offline=deb.parent, manifests={"fw": m})
    text = str(err.value)
    assert pinned in text and hashlib.sha256(deb.read_bytes()).hexdigest() in text
    assert "refusing to use it" in text and err.value.hint and "reviewed" in err.value.hint
    assert not list((cache / "firmware").rglob("*.deb"))  # nothing unverified was kept


def test_missing_offline_file_says_where_to_get_it(tmp_path: Path, cache: Path) -> None:
    deb = build_deb(tmp_path, "fw", {"usr/lib/fw/start.elf": ELF.read_bytes(),
                                     "usr/lib/fw/cfg.dat": b"cfg"})
    m = load_manifest(manifest(tmp_path, "fw", deb))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AppsdkError, match="not in the offline directory") as err:
        fetch(["fw"], offline=empty, manifests={"fw": m})
    assert err.value.hint and "deb.debian.org/debian/pool/main/t/fw/" in err.value.hint


def test_broken_elf_firmware_is_refused(tmp_path: Path, cache: Path) -> None:
    truncated = ELF.read_bytes()[:3000]
    deb = build_deb(tmp_path, "fw", {"usr/lib/fw/start.elf": truncated,
                                     "usr/lib/fw/cfg.dat": b"cfg"})
    m = load_manifest(manifest(tmp_path, "fw", deb))
    with pytest.raises(FirmwareMismatch, match=r"start\.elf"):
        fetch(["fw"], offline=deb.parent, manifests={"fw": m})
    html = tmp_path / "page.elf"
    html.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(FirmwareMismatch, match="not a valid ELF"):
        check_elf(html)
    assert "loadable segments" in check_elf(ELF)


def test_manifest_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nversion: '1'\ndebian: pool/x.deb\nsha256: ABC\nfiles: {a: b}\n")
    with pytest.raises(ConfigError, match=r"x.yaml:4: sha256: 'ABC' is not a lowercase sha256"):
        load_manifest(path)
    path.write_text("name: y\nversion: '1'\ndebian: pool/x.deb\nsha256: " + "0" * 64 +
                    "\nfiles: {a: b}\n")
    with pytest.raises(ConfigError, match="must match the file name"):
        load_manifest(path)


def test_shipped_manifests_pin_every_component() -> None:
    manifests = load_manifests()
    assert {"raspi-firmware", "u-boot-rpi", "u-boot-qemu", "qemu-efi-aarch64",
            "edk2-rpi4"} <= set(manifests)
    assert manifests["edk2-rpi4"].url and manifests["edk2-rpi4"].url.startswith(
        "https://github.com/pftf/RPi4/releases/download/")
    # The emulated U-Boot chain must be the same U-Boot the Pi profiles ship.
    assert manifests["u-boot-qemu"].version == manifests["u-boot-rpi"].version
    assert manifests["u-boot-rpi"].version >= "2025.07"  # EFI file rename (boot counting)


def zip_manifest(tmp: Path, payload: dict[str, bytes], sha: str | None = None) -> tuple[Path, Path]:
    archive = tmp / "offline" / "fw_v1.zip"
    archive.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in payload.items():
            z.writestr(name, data)
    sha = sha or hashlib.sha256(archive.read_bytes()).hexdigest()
    path = tmp / "manifests" / "zipfw.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"name: zipfw\nversion: v1\nurl: https://example.invalid/fw_v1.zip\n"
                    f"sha256: {sha}\nfiles:\n  EFI.fd: EFI.fd\n  overlays/a.dtbo: overlays/a.dtbo\n"
                    "  start.elf: start.elf\nelf: [start.elf]\n")
    return archive, path


def test_zip_by_url_offline(tmp_path: Path, cache: Path) -> None:
    archive, path = zip_manifest(tmp_path, {"EFI.fd": b"efi", "overlays/a.dtbo": b"dtbo",
                                            "start.elf": ELF.read_bytes(), "extra": b"x"})
    m = load_manifest(path)
    assert m.origin("http://mirror.invalid") == "https://example.invalid/fw_v1.zip"
    out = fetch(["zipfw"], offline=archive.parent, manifests={"zipfw": m})["zipfw"]
    assert (out / "overlays/a.dtbo").read_bytes() == b"dtbo"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".complete", "EFI.fd", "overlays/a.dtbo", "start.elf"]


def test_zip_mismatch_and_unsafe_members_are_refused(tmp_path: Path, cache: Path) -> None:
    archive, path = zip_manifest(tmp_path, {"EFI.fd": b"efi"}, sha="cd" * 32)
    with pytest.raises(FirmwareMismatch, match="refusing to use it"):
        fetch(["zipfw"], offline=archive.parent, manifests={"zipfw": load_manifest(path)})
    evil = tmp_path / "evil"
    evil.mkdir()
    archive, path = zip_manifest(evil, {"../../escape": b"x", "EFI.fd": b"efi"})
    with pytest.raises(FirmwareMismatch, match="unsafe member"):
        fetch(["zipfw"], offline=archive.parent, manifests={"zipfw": load_manifest(path)})
    assert not (tmp_path / "escape").exists()


def test_manifest_needs_exactly_one_source(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nversion: '1'\nsha256: " + "0" * 64 + "\nfiles: {a: b}\n")
    with pytest.raises(ConfigError, match="exactly one source"):
        load_manifest(path)
