"""What `appsdk build` produced, checked by real peers: sfdisk reads the GPT, bmaptool
copies with our .bmap, the UKI's sections say what build.json says. Plus reproducibility and
cache reuse. (Marked vm: builds need root and a Debian mirror.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from vmlib import build_hello, esp_extent, gzip_updates, hello_copy

import appsdk
from appsdk.core.progress import RecordingReporter
from appsdk.image import bmap
from appsdk.image.pe import read_text, sections
from appsdk.trust import keys

REPO = Path(__file__).resolve().parents[2]


def test_build_json_describes_artifacts(hello_v1: appsdk.BuildResult) -> None:
    record = appsdk.load_build(hello_v1.output)
    assert (record["id"], record["version"], record["board"]["name"]) == ("hello", "1.0",
                                                                         "x86-uefi")
    for kind in ("image", "bmap", "uki", "usr"):
        entry = record["artifacts"][kind]
        path = hello_v1.output / entry["file"]
        assert path.stat().st_size == entry["size"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    # Signed for Secure Boot (vmlib.signed_hello): the key set rides along, never enrolled.
    assert record["esp_files"] == ["EFI/BOOT/BOOTX64.EFI", "EFI/Linux/hello_1.0.efi",
                                   "EFI/systemd/systemd-bootx64.efi", "loader/keys/auto/KEK.auth",
                                   "loader/keys/auto/PK.auth", "loader/keys/auto/db.auth",
                                   "loader/loader.conf"]
    assert record["secure_boot"]["enroll"] == "off"
    assert record["tools"]["systemd"].startswith("systemd 257")
    assert not (hello_v1.output / ".work").exists()


def test_uki_sections(hello_v1: appsdk.BuildResult) -> None:
    uki = hello_v1.artifacts["uki"].path
    names = set(sections(uki))
    assert {".linux", ".initrd", ".cmdline", ".osrel", ".uname"} <= names
    assert read_text(uki, ".cmdline") == hello_v1.cmdline
    roothash = appsdk.load_build(hello_v1.output)["verity"]["roothash"]
    assert f"usrhash={roothash}" in hello_v1.cmdline
    osrel = read_text(uki, ".osrel")
    assert "IMAGE_ID=hello\n" in osrel and "IMAGE_VERSION=1.0\n" in osrel
    assert read_text(uki, ".uname") == appsdk.load_build(hello_v1.output)["kernel"]


def test_sfdisk_reads_the_gpt(hello_v1: appsdk.BuildResult) -> None:
    out = subprocess.run(["sfdisk", "--json", str(hello_v1.image)], check=True,
                         capture_output=True, text=True).stdout
    table = json.loads(out)["partitiontable"]
    assert table["label"] == "gpt" and table["sectorsize"] == 512
    parts = table["partitions"]
    assert [p["name"] for p in parts] == ["esp", "usr_1.0", "verity_1.0"]
    assert parts[0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert parts[1]["type"] == "8484680C-9521-48C6-9C11-B0720656F69E"  # usr x86-64
    assert parts[2]["type"] == "77FF5F63-E7B6-4633-ACF4-1565B864C0E6"  # usr x86-64 verity
    assert parts[1]["size"] * 512 == 1024**3
    assert parts[2]["size"] * 512 == 16 * 1024**2


def test_the_esp_is_a_clean_fat32_with_2k_clusters(hello_v1: appsdk.BuildResult,
                                                    tmp_path: Path) -> None:
    """fsck.fat reads the ESP repart made: FAT32, clean, 2 KiB clusters on hello's 256M
    (mkfs.fat alone would make 512-byte ones, four times the work for a sync-mounted write)."""
    offset, size = esp_extent(hello_v1.image)
    esp = tmp_path / "esp.img"
    with hello_v1.image.open("rb") as src, esp.open("wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    checked = subprocess.run(["fsck.vfat", "-n", "-v", str(esp)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2048 bytes per cluster" in checked.stdout
    assert "32 bit entries" in checked.stdout, checked.stdout


def test_inspect_reads_back_what_the_build_recorded(hello_v1: appsdk.BuildResult) -> None:
    """`appsdk inspect` on the bare image (GPT parsed by us, ESP read with mtools) agrees
    with build.json and with sfdisk."""
    from appsdk.image.inspect import inspect

    record = appsdk.load_build(hello_v1.output)
    bare = inspect(hello_v1.image)
    assert (bare["id"], bare["version"]) == ("hello", "1.0")
    assert bare["cmdline"] == record["cmdline"]
    assert [f["path"] for f in bare["esp_files"]] == record["esp_files"]
    assert [(p["label"], p["type"], p["offset"], p["size"], p["uuid"])
            for p in bare["partitions"]] == [
        (p["label"], p["type"], p["offset"], p["size"], p["uuid"])
        for p in record["partitions"]]
    assert bare["systemd_boot"].startswith("systemd-boot 257")
    dump = json.loads(subprocess.run(["sfdisk", "--json", str(hello_v1.image)], check=True,
                                     capture_output=True, text=True).stdout)
    assert bare["disk_guid"].upper() == dump["partitiontable"]["id"]
    cli = subprocess.run([sys.executable, "-m", "appsdk.cli", "inspect",
                          str(hello_v1.output), "--json"], capture_output=True, text=True,
                         check=True)
    assert json.loads(cli.stdout)["board"] == "x86-uefi"


def test_bmaptool_copies_with_our_bmap(hello_v1: appsdk.BuildResult, tmp_path: Path) -> None:
    if shutil.which("bmaptool") is None:
        pytest.fail("bmaptool (bmap-tools) is needed as the oracle")
    out = tmp_path / "copy.img"
    subprocess.run(["bmaptool", "copy", "--bmap", str(hello_v1.artifacts["bmap"].path),
                    str(hello_v1.image), str(out)], check=True, capture_output=True)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hello_v1.artifacts["image"].sha256
    parsed = bmap.parse(hello_v1.artifacts["bmap"].path)
    assert parsed.mapped_bytes < 600 * 10**6  # the goal for examples/hello


def test_same_inputs_same_bytes_and_overlay_change_reuses_cache(
        hello_v1: appsdk.BuildResult, hello_app: Path, tmp_path: Path,
        signing_key: keys.SigningKey, update_port: int) -> None:
    again = build_hello(hello_app, "1.0", tmp_path / "again", signing_key, update_port)
    for kind in ("image", "uki", "usr", "verity", "bmap", "update-usr", "update-uki", "sums"):
        assert again.artifacts[kind].sha256 == hello_v1.artifacts[kind].sha256, kind

    app = tmp_path / "hello-changed"
    hello_copy(app)
    (app / "overlay/usr/lib/hello/extra.txt").write_text("changed overlay\n")
    gzip_updates(app)  # the reproducible build above keeps the default, xz
    events = RecordingReporter()
    changed = appsdk.build(app, board="x86-uefi", version="1.0", output=tmp_path / "changed",
                           reporter=events, key_dir=signing_key.home,
                           update_url=f"http://10.0.2.2:{update_port}/")
    done = {e.stage: e.message for e in events.events if e.kind == "stage-done"}
    print(done, file=sys.stderr)
    assert done["rootfs"].startswith("(cached")
    assert done["initrd"] == "(cached)"
    assert changed.artifacts["usr"].sha256 != hello_v1.artifacts["usr"].sha256
    assert changed.artifacts["update-usr"].path.name == "hello_1.0.usr.gz"
