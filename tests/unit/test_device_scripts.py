"""The on-device bash tools run for real, on the host, against a fake root (APPSDK_ROOT) with
PATH stubs for the commands that would touch the system (hostname, systemctl, mount, sync)."""

from __future__ import annotations

import base64
import functools
import json
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pe import tiny_pe

from appsdk.deliver.provision_serial import install_local_update
from appsdk.image.pe import sections

DEVICE = Path(str(resources.files("appsdk") / "data" / "device"))
SCRIPTS = sorted(p for p in DEVICE.iterdir() if p.is_file())

STUBS = {
    # hostname: prints the fake current name; `hostname NAME` records what was set.
    "hostname": 'if [ $# -gt 0 ]; then printf "%s\\n" "$1" > "$APPSDK_ROOT/hostname.set"; '
                'else cat "$APPSDK_ROOT/hostname.now"; fi',
    "systemctl": 'echo "systemctl $*" >> "$APPSDK_ROOT/log"\n'
                 '[ "$1" = list-units ] && cat "$APPSDK_ROOT/units" 2>/dev/null\n'
                 '[ "$1" != -q ]',
    "systemd-analyze": '[ "$1" = compare-versions ] && [ "$3" = gt ] && [ "$2" != "$4" ] && '
                       '[ "$(printf "%s\\n%s\\n" "$2" "$4" | sort -V | tail -n1)" = "$2" ]',
    "systemd-cat": "cat > /dev/null",
    "mountpoint": '[ -e "$APPSDK_ROOT/mounted" ]',
    "mount": 'echo "mount $*" >> "$APPSDK_ROOT/log"; [ ! -e "$APPSDK_ROOT/mount-fails" ]',
    "sync": 'echo "sync $*" >> "$APPSDK_ROOT/log"; [ ! -e "$APPSDK_ROOT/sync-fails" ]',
}

SYSUPDATE_STUB = """#!/bin/bash
echo "sysupdate $*" >> "$APPSDK_ROOT/log"
echo "sysupdate says: $*"
exit "$(cat "$APPSDK_ROOT/sysupdate-rc" 2>/dev/null || echo 0)"
"""

TRANSFER = """[Transfer]
ProtectVersion=%A

[Source]
Type=url-file
Path=http://old.example.com/
MatchPattern=hello_@v.usr.xz

[Target]
Type=partition
Path=auto
"""


class Device:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.bin = tmp / "bin"
        for d in ("usr/lib/appsdk", "usr/bin", "usr/lib/systemd", "usr/lib/sysupdate.d",
                  "var/lib/appsdk", "etc", "run", "efi/EFI/Linux", "dev/disk/by-partlabel"):
            (self.root / d).mkdir(parents=True)
        for script in SCRIPTS:
            shutil.copy(script, self.root / "usr/lib/appsdk" / script.name)
            (self.root / "usr/lib/appsdk" / script.name).chmod(0o755)
        self.bin.mkdir()
        for name, body in STUBS.items():
            self.write_exe(self.bin / name, f"#!/bin/bash\n{body}\n")
        self.write_exe(self.root / "usr/lib/systemd/systemd-sysupdate", SYSUPDATE_STUB)
        self.os_release("1.0")
        self.put("etc/machine-id", b"0123456789abcdef0123456789abcdef\n")
        self.put("hostname.now", b"hello\n")
        self.put("console", b"")

    @staticmethod
    def write_exe(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def put(self, rel: str, data: bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def os_release(self, version: str) -> None:
        self.put("usr/lib/os-release", f"ID=debian\nIMAGE_ID=hello\nIMAGE_VERSION={version}\n"
                 .encode())

    def log(self) -> list[str]:
        path = self.root / "log"
        return path.read_text().splitlines() if path.exists() else []

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "APPSDK_ROOT": str(self.root),
                "APPSDK_CONSOLE": str(self.root / "console"), "LC_ALL": "C.UTF-8"}

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["bash", str(self.root / "usr/lib/appsdk" / tool), *args],
                              env=self.env(), capture_output=True, timeout=30, check=False)


@pytest.fixture()
def dev(tmp_path: Path) -> Device:
    return Device(tmp_path)


def test_scripts_parse() -> None:
    # shellcheck -x -P sdk/appsdk/data/device ... is clean too (not run here: ~2 s).
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False)
        assert result.returncode == 0, (script.name, result.stderr)


# --- appsdk-status -----------------------------------------------------------------------

NASTY = [b'we"ird\\name', b"tab\there\x01\x1f", b"latin1 \xe9\xff", b"\xe2\x82 cut",
         b"\xed\xa0\x80 surrogate", "ünïcødé 😀".encode(), b"$(x) `y` *"]


def test_status_json_parses_for_nasty_names(dev: Device) -> None:
    dev.put("hostname.now", NASTY[0] + b"\n")
    dev.put("var/lib/appsdk/identity/serial", NASTY[2] + b"\n")
    dev.put("var/lib/appsdk/failed-versions", NASTY[1] + b"\n2.0\n")
    dev.put('dev/disk/by-partlabel/usr_1"0', b"")
    dev.put("dev/disk/by-partlabel/usr_*", b"")
    dev.put("units", b'appsdk-health-a\\x22b.service loaded failed failed x\n'
            b"appsdk-health-web.service loaded active exited y\n")
    result = dev.run("appsdk-status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["hostname"] == NASTY[0].decode()
    assert status["serial"] == NASTY[2].decode("utf-8", "replace")
    assert status["failed"] == ["2.0", NASTY[1].decode()]
    assert sorted(status["installed"]) == ["*", '1"0']
    assert status["health"] == {"appsdk-health-a\\x22b.service": "failed",
                                "appsdk-health-web.service": "active"}
    assert status["running"] == "1.0" and status["blessed"] is True
    assert status["tries_left"] is None


def test_status_text_mode(dev: Device) -> None:
    result = dev.run("appsdk-status")
    assert result.returncode == 0, result.stderr
    assert b"running:   1.0" in result.stdout and b"failed:    none" in result.stdout


PCR_PEM = b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----\n"


def luks2_var(dev: Device, tokens: list[dict[str, object]]) -> None:
    """/dev/disk/by-partlabel/var as a LUKS2 header: the binary part, then the JSON area
    as libcryptsetup writes it (no spaces, NUL-padded)."""
    meta = json.dumps({"keyslots": {"0": {"type": "luks2"}, "1": {"type": "luks2"}},
                       "tokens": {str(i): t for i, t in enumerate(tokens)},
                       "segments": {}, "digests": {}, "config": {}}, separators=(",", ":"))
    header = b"LUKS\xba\xbe\x00\x02".ljust(4096, b"\x00")
    dev.put("dev/disk/by-partlabel/var", header + meta.encode().ljust(12288, b"\x00"))


TPM2_TOKEN = {"type": "systemd-tpm2", "keyslots": ["0"], "tpm2-blob": "AAAA",
              "tpm2-pcrs": [7], "tpm2-pcr-bank": "sha256", "tpm2-primary-alg": "ecc",
              "tpm2_pubkey_pcrs": [11], "tpm2_pubkey": base64.b64encode(PCR_PEM).decode()}


def test_status_reports_the_seal_read_from_the_luks_header(dev: Device) -> None:
    luks2_var(dev, [TPM2_TOKEN, {"type": "systemd-recovery", "keyslots": ["1"]}])
    dev.put("run/systemd/tpm2-pcr-public-key.pem", PCR_PEM)
    status = json.loads(dev.run("appsdk-status", "--json").stdout)
    assert status["var"] == {"encrypted": True, "unlock": "tpm2", "pcrs": [7],
                             "pcr_key_pcrs": [11], "pcr_key_is_uki_key": True,
                             "recovery_key": True}
    # Another PCR key in the running UKI: said, not hidden.
    dev.put("run/systemd/tpm2-pcr-public-key.pem", PCR_PEM.replace(b"MIIB", b"MIIC"))
    assert json.loads(dev.run("appsdk-status", "--json").stdout)["var"][
        "pcr_key_is_uki_key"] is False
    text = dev.run("appsdk-status").stdout
    assert b"var:       encrypted (unlock: tpm2, PCRs [7]" in text


def test_status_var_plain_and_a_hostile_header(dev: Device) -> None:
    dev.put("dev/disk/by-partlabel/var", bytes(1080) + b"\x53\xef" + bytes(4096))
    result = dev.run("appsdk-status", "--json")
    # Not a word on stderr: a device's tools read the JSON with stderr on the same stream,
    # and bash warns of each NUL a command substitution drops.
    assert result.stderr == b""
    assert json.loads(result.stdout)["var"] == {
        "encrypted": False, "unlock": "none", "pcrs": None, "pcr_key_pcrs": None,
        "pcr_key_is_uki_key": None, "recovery_key": False}
    assert b"var:       plain" in dev.run("appsdk-status").stdout
    token = {**TPM2_TOKEN, "tpm2-pcrs": ["7\"]},{\"x"], "tpm2_pubkey_pcrs": "11"}
    luks2_var(dev, [token])
    status = json.loads(dev.run("appsdk-status", "--json").stdout)  # still valid JSON
    assert status["var"]["unlock"] == "tpm2" and status["var"]["pcrs"] is None
    assert status["var"]["pcr_key_pcrs"] is None and status["var"]["recovery_key"] is False


# --- appsdk-var-recovery -----------------------------------------------------------------

RECOVERY_KEY = "-".join(["cbdefghi"] * 8)


@pytest.mark.parametrize("printed", [RECOVERY_KEY, "", "not a key"])
def test_var_recovery_shows_the_key_once_on_the_console(dev: Device, printed: str) -> None:
    dev.write_exe(dev.bin / "systemd-cryptenroll",
                  f'#!/bin/bash\necho "$*" >> "$APPSDK_ROOT/log"\n'
                  f'echo "A secret recovery key" >&2\necho "{printed}"\n')
    result = dev.run("appsdk-var-recovery")
    console = dev.read("console")
    assert dev.log()[0] == "--recovery-key --unlock-tpm2-device=auto /dev/disk/by-partlabel/var"
    if printed == RECOVERY_KEY:
        assert result.returncode == 0, result.stderr
        assert f"/var recovery key: {RECOVERY_KEY}" in console
        assert RECOVERY_KEY.encode() not in result.stderr  # stderr is the journal
        assert (dev.root / "var/lib/appsdk/recovery-key-enrolled").exists()
    else:
        assert result.returncode == 1
        assert "no recovery key" in console and "next boot tries again" in console
        assert not (dev.root / "var/lib/appsdk/recovery-key-enrolled").exists()


def json_strings(*values: bytes) -> list[str]:
    lib = DEVICE / "appsdk-lib"
    out = subprocess.run(
        ["bash", "-c", f'. {lib}; for a; do json_string "$a"; echo; done', "_", *values],
        capture_output=True, check=True, timeout=30, env={"LC_ALL": "C.UTF-8"}).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_json_string_escapes_and_replaces() -> None:
    assert json_strings(*NASTY) == [v.decode("utf-8", "replace") for v in NASTY]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=24).filter(lambda b: b"\0" not in b),
                min_size=1, max_size=20))
def test_json_string_is_always_valid_json(values: list[bytes]) -> None:
    # Valid UTF-8 comes back unchanged; anything else as Python's own "replace" decoding.
    assert json_strings(*values) == [v.decode("utf-8", "replace") for v in values]


# --- appsdk-rollback-check ---------------------------------------------------------------

def test_rollback_check_matches_versions_exactly(dev: Device) -> None:
    dev.os_release("0.9")
    dev.put("var/lib/appsdk/failed-versions", b"100\n")
    dev.put("efi/EFI/Linux/hello_1.0+0-3.efi", b"MZ")
    result = dev.run("appsdk-rollback-check")
    assert result.returncode == 0, result.stderr
    assert dev.read("var/lib/appsdk/failed-versions").split() == ["100", "1.0"]
    assert "rolled back from 1.0 to 0.9" in dev.read("console")
    dev.run("appsdk-rollback-check")  # already recorded: not twice
    assert dev.read("var/lib/appsdk/failed-versions").split() == ["100", "1.0"]


# --- appsdk-identity ---------------------------------------------------------------------

def identity(dev: Device, **values: bytes) -> subprocess.CompletedProcess[bytes]:
    for name, data in values.items():
        dev.put(f"var/lib/appsdk/identity/{'update-url' if name == 'update_url' else name}",
                data)
    return dev.run("appsdk-identity")


def test_identity_url_with_ampersand_pipe_and_percent(dev: Device) -> None:
    dev.put("usr/lib/sysupdate.d/50-usr.transfer", TRANSFER.encode())
    result = identity(dev, update_url=b"https://u.example.com/a&b|c%20d\\/?x=1&y=2\n")
    assert "ignoring" in result.stderr.decode()  # a backslash is no URL
    assert not (dev.root / "etc/sysupdate.d/50-usr.transfer").exists()
    result = identity(dev, update_url=b"https://u.example.com/a&b|c%20d/?x=1&y=2\n")
    assert result.returncode == 0, result.stderr
    text = dev.read("etc/sysupdate.d/50-usr.transfer")
    # % doubled: sysupdate expands specifiers in Path=. Everything else as written.
    assert "Path=https://u.example.com/a&b|c%%20d/?x=1&y=2/\n" in text
    assert text.replace("Path=https://u.example.com/a&b|c%%20d/?x=1&y=2/",
                        "Path=http://old.example.com/") == TRANSFER
    assert "ProtectVersion=%A" in text and "Path=auto" in text


@pytest.mark.parametrize("url", [b"ftp://x/", b"http://a b/", b"http://x/\x1b[2J",
                                 b"http://x/\xc3\xa9", b"javascript:alert(1)", b"http://"])
def test_identity_skips_a_bad_url(dev: Device, url: bytes) -> None:
    dev.put("usr/lib/sysupdate.d/50-usr.transfer", TRANSFER.encode())
    result = identity(dev, update_url=url + b"\n", hostname=b"dev-1\n")
    assert result.returncode == 0, result.stderr
    assert not (dev.root / "etc/sysupdate.d/50-usr.transfer").exists()
    assert "ignoring" in dev.read("console")
    assert dev.read("etc/hostname") == "dev-1\n"  # the good values still apply


@pytest.mark.parametrize("name", [b"bad_host!", b"-x", b"a" * 64, b"a b", b"x\xff", b"\n"])
def test_identity_skips_a_bad_hostname(dev: Device, name: bytes) -> None:
    dev.put("etc/hostname", b"hello\n")
    result = identity(dev, hostname=name + b"\n")
    assert result.returncode == 0, result.stderr
    assert dev.read("etc/hostname") == "hello\n"
    assert not (dev.root / "hostname.set").exists()


def test_identity_applies_good_values(dev: Device) -> None:
    dev.put("var/lib/appsdk/identity/credentials/api-token", b"s3cret")
    dev.put("var/lib/appsdk/identity/credentials/bad name", b"x")
    (dev.root / "var/lib/appsdk/identity/credentials/link").symlink_to("/etc/passwd")
    result = identity(dev, hostname=b"dev-A1\n", authorized_keys=b"ssh-ed25519 AAAA k\n")
    assert result.returncode == 0, result.stderr
    assert dev.read("etc/hostname") == "dev-A1\n" and dev.read("hostname.set") == "dev-A1\n"
    assert dev.read("root/.ssh/authorized_keys") == "ssh-ed25519 AAAA k\n"
    assert sorted(p.name for p in (dev.root / "run/credstore").iterdir()) == ["api-token"]
    assert list((dev.root / "etc").glob("*.appsdk-new")) == []


def test_identity_refuses_a_machine_id_not_from_var(dev: Device) -> None:
    dev.put("var/lib/appsdk/machine-id", b"fedcba9876543210fedcba9876543210\n")
    dev.put("var/lib/appsdk/identity/hostname", b"dev-1\n")
    result = dev.run("appsdk-identity")
    assert result.returncode == 1
    assert "machine-id" in dev.read("console")
    dev.put("var/lib/appsdk/machine-id", b"0123456789abcdef0123456789abcdef\n")
    assert dev.run("appsdk-identity").returncode == 0


# --- appsdk-esp and appsdk-update --------------------------------------------------------

def update(dev: Device, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["bash", str(dev.root / "usr/lib/appsdk/appsdk-update"), *args],
                          env=dev.env(), capture_output=True, timeout=30, check=False)


def uki(dev: Device, name: str) -> bytes:
    """A small but whole PE file on the fake ESP, as a UKI would be."""
    path = dev.root / "efi/EFI/Linux" / name
    tiny_pe(path, {".osrel": b"IMAGE_VERSION=x\n", ".linux": bytes(3000)})
    return path.read_bytes()


def test_update_is_synced_before_it_reports_success(dev: Device) -> None:
    dev.put("mounted", b"")
    uki(dev, "hello_2.0+3-0.efi")
    result = update(dev, "--no-pager", "update")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"sysupdate says: --no-pager update\n"
    esp = dev.root / "efi"
    assert dev.log() == [
        f"mount -o remount,rw,sync {esp}",
        "sysupdate --no-pager update",
        "sync ", f"sync -f {esp}", f"sync -- {esp}/EFI/Linux/hello_2.0+3-0.efi",
        f"mount -o remount,ro,async {esp}",
    ]


def test_update_takes_away_a_damaged_uki_so_its_version_is_installed_again(
        dev: Device) -> None:
    """A UKI cut short (power cut before the sync; fsck.fat truncating unlinked clusters)
    keeps its version's name: sysupdate would call that version installed for good."""
    dev.put("mounted", b"")
    whole = uki(dev, "hello_2.0+3-0.efi")
    uki(dev, "hello_1.0.efi")
    for name, data in (("hello_3.0+3-0.efi", whole[:len(whole) - 100]),
                       ("hello_4.0.efi", b""), ("hello_5.0+2-1.efi", b"MZ" + bytes(600))):
        dev.put(f"efi/EFI/Linux/{name}", data)
    dev.put("efi/EFI/Linux/hello_1.0+1-2.efi", b"")  # the running version: never touched
    result = update(dev, "update")
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in (dev.root / "efi/EFI/Linux").iterdir())
    assert left == ["hello_1.0+1-2.efi", "hello_1.0.efi", "hello_2.0+3-0.efi"]
    said = result.stderr.decode()
    for name in ("hello_3.0+3-0.efi", "hello_4.0.efi", "hello_5.0+2-1.efi"):
        assert f"{name} on the ESP is damaged" in said, said
    assert dev.log().index("sysupdate update") > 0  # after the ESP became writable


def test_update_passes_a_failure_through_and_still_makes_the_esp_read_only(
        dev: Device) -> None:
    dev.put("mounted", b"")
    dev.put("sysupdate-rc", b"76")
    assert update(dev, "update").returncode == 76
    assert dev.log()[-1].startswith("mount -o remount,ro")


def test_update_that_cannot_sync_is_not_a_success(dev: Device) -> None:
    dev.put("mounted", b"")
    dev.put("sync-fails", b"")
    result = update(dev, "update")
    assert result.returncode == 1
    assert b"not durable" in result.stderr


def test_update_list_leaves_the_esp_alone(dev: Device) -> None:
    dev.put("mounted", b"")
    assert update(dev, "--no-pager", "list").returncode == 0
    assert dev.log() == ["sysupdate --no-pager list"]


def test_update_refuses_without_a_mounted_esp(dev: Device) -> None:
    result = update(dev, "update")
    assert result.returncode == 1
    assert "not mounted" in dev.read("console")
    assert not any(line.startswith("sysupdate") for line in dev.log())


def test_esp_stays_writable_while_another_writer_holds_it(dev: Device) -> None:
    dev.put("mounted", b"")
    assert dev.run("appsdk-esp", "rw", "systemd-sysupdate.service").returncode == 0
    assert dev.run("appsdk-esp", "rw", "systemd-bless-boot.service").returncode == 0
    assert dev.run("appsdk-esp", "ro", "systemd-bless-boot.service").returncode == 0
    assert not any("remount,ro" in line for line in dev.log())
    assert dev.run("appsdk-esp", "ro", "systemd-sysupdate.service").returncode == 0
    assert dev.log()[-1].endswith(f"remount,ro,async {dev.root / 'efi'}")
    assert dev.run("appsdk-esp", "ro", "systemd-sysupdate.service").returncode == 0
    assert dev.run("appsdk-esp", "rw", "../x").returncode == 2


# --- appsdk-update: a damaged /usr slot is found and freed for the next update -----------

def lib(dev: Device, *call: str) -> subprocess.CompletedProcess[bytes]:
    """One function of appsdk-lib, called with its arguments."""
    return subprocess.run(["bash", "-c", '. "$APPSDK_ROOT/usr/lib/appsdk/appsdk-lib"; "$@"',
                           "lib", *call], env=dev.env(), capture_output=True, timeout=30,
                          check=False)


HASH = {"1.0": "a1" * 32, "2.0": "b2" * 32}


def signed_uki(dev: Device, name: str, cmdline: bytes) -> Path:
    return tiny_pe(dev.root / "efi/EFI/Linux" / name,
                   {".osrel": b"IMAGE_VERSION=x\n", ".cmdline": cmdline, ".linux": bytes(700)})


def test_pe_section_and_uki_usrhash(dev: Device) -> None:
    cmdline = f"root=tmpfs usrhash={HASH['2.0']} quiet\n\0".encode()
    uki_path = signed_uki(dev, "hello_2.0.efi", cmdline)
    found = sections(uki_path)[".cmdline"]
    out = lib(dev, "pe_section", str(uki_path), ".cmdline")
    assert out.stdout.decode().split() == [str(found.offset), str(len(cmdline))]
    assert lib(dev, "pe_section", str(uki_path), ".dtb").returncode == 1
    assert lib(dev, "uki_usrhash", str(uki_path)).stdout.decode() == HASH["2.0"] + "\n"
    uki_path.write_bytes(uki_path.read_bytes()[:found.offset + 10])  # cut short
    assert lib(dev, "pe_section", str(uki_path), ".cmdline").returncode == 1


@pytest.mark.parametrize("cmdline", [
    b"root=tmpfs", b"usrhash=" + b"a" * 63, b"usrhash=" + b"g" * 64,
    b"usrhash=" + b"a" * 64 + b" usrhash=" + b"b" * 64, b"usrhash= " + b"a" * 64])
def test_uki_usrhash_wants_exactly_one_hash(dev: Device, cmdline: bytes) -> None:
    assert lib(dev, "uki_usrhash", str(signed_uki(dev, "x.efi", cmdline))).returncode == 1


SLOTS = ["esp", "usr_1.0", "verity_1.0", "usr_2.0", "verity_2.0", "var"]


@functools.cache
def gpt_bytes() -> bytes:
    """A GPT disk image as the host's sfdisk writes it, one 1 MiB partition per slot label
    (made once: sfdisk syncs what it writes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "disk.img"
        with path.open("wb") as f:
            f.truncate(8 * 1024 * 1024)
        script = "label: gpt\n" + "".join(f"size=1M, name={label}\n" for label in SLOTS)
        subprocess.run(["sfdisk", "-q", str(path)], input=script.encode(), check=True)
        return path.read_bytes()


def gpt_image(path: Path) -> Path:
    path.write_bytes(gpt_bytes())
    return path


def gpt_labels(path: Path) -> list[str]:
    """The partition names as sfdisk reads them, after checking both GPTs are intact."""
    check = subprocess.run(["sfdisk", "--verify", str(path)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0 and "No errors" in check.stdout, check.stdout + check.stderr
    table = json.loads(subprocess.run(["sfdisk", "-J", str(path)], capture_output=True,
                                      check=True).stdout)["partitiontable"]
    return [p.get("name", "") for p in table["partitions"]]


def test_gpt_set_label_changes_one_name_in_both_gpts(dev: Device) -> None:
    disk = gpt_image(dev.root / "disk.img")
    before = disk.read_bytes()
    result = lib(dev, "gpt_set_label", str(disk), "4", "_empty")
    assert result.returncode == 0, result.stderr
    assert gpt_labels(disk) == ["esp", "usr_1.0", "verity_1.0", "_empty", "verity_2.0", "var"]
    after = disk.read_bytes()
    # Only the two copies of one entry's name and the four CRC32s changed.
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    entry = [512 * 2 + 3 * 128 + 56, len(after) - 33 * 512 + 3 * 128 + 56]
    crcs = [512 + 16, 512 + 88, len(after) - 512 + 16, len(after) - 512 + 88]
    allowed = {o + i for o in entry for i in range(72)} | {o + i for o in crcs for i in range(4)}
    assert changed and set(changed) <= allowed
    # The backup holds the new name too: with the primary gone, sfdisk reads it from there.
    disk.write_bytes(after[:512] + bytes(512) + after[1024:])
    table = subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, check=False)
    assert b'"name": "_empty"' in table.stdout, table.stderr


def with_crc(image: bytearray, header: int, offset: int, value: bytes) -> None:
    """value written into the GPT header at byte `header`, its CRC32 made to match again."""
    image[header + offset:header + offset + len(value)] = value
    size = int.from_bytes(image[header + 12:header + 16], "little")
    image[header + 16:header + 20] = bytes(4)
    crc = zlib.crc32(bytes(image[header:header + size]))
    image[header + 16:header + 20] = crc.to_bytes(4, "little")


def bad_primary_crc(image: bytearray) -> None:
    image[512 + 60] ^= 1  # a byte of the disk GUID


def bad_backup_crc(image: bytearray) -> None:
    image[len(image) - 512 + 60] ^= 1


def bad_entry_crc(image: bytearray) -> None:
    image[1024 + 128 + 60] ^= 1  # a name byte of partition 2, in the primary array


def entry_size_256(image: bytearray) -> None:
    with_crc(image, 512, 84, (256).to_bytes(4, "little"))


def no_signature(image: bytearray) -> None:
    image[512:520] = b"EFI PARX"


@pytest.mark.parametrize(("damage", "number", "label", "said"), [
    (bad_primary_crc, "2", "x", "does not match its CRC32"),
    (bad_backup_crc, "2", "x", "does not match its CRC32"),
    (bad_entry_crc, "2", "x", "partition entries do not match"),
    (entry_size_256, "2", "x", "256-byte entries"),
    (no_signature, "2", "x", "no GPT signature"),
    (None, "0", "x", "no partition 0"),
    (None, "7", "x", "no partition 7"),  # an unused entry
    (None, "129", "x", "no partition 129"),
    (None, "2x", "x", "no partition 2x"),
    (None, "2", "usr_\u00e9", "not a partition name"),
    (None, "2", "a b", "not a partition name"),
    (None, "2", "", "not a partition name"),
    (None, "2", "a" * 37, "not a partition name"),
])
def test_gpt_set_label_refuses_and_leaves_the_disk_as_it_was(
        dev: Device, damage: Callable[[bytearray], None] | None, number: str, label: str,
        said: str) -> None:
    disk = gpt_image(dev.root / "disk.img")
    image = bytearray(disk.read_bytes())
    if damage:
        damage(image)
        disk.write_bytes(bytes(image))
    result = lib(dev, "gpt_set_label", str(disk), number, label)
    assert result.returncode == 1
    assert said in result.stderr.decode(), result.stderr
    assert disk.read_bytes() == image


@pytest.fixture(scope="module")
def gpt_dev(tmp_path_factory: pytest.TempPathFactory) -> Device:
    return Device(tmp_path_factory.mktemp("gpt"))


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
               min_size=1, max_size=36).filter(lambda s: s not in (".", "..")),
       st.integers(1, len(SLOTS)))
def test_gpt_set_label_round_trips_through_sfdisk(gpt_dev: Device, label: str,
                                                  number: int) -> None:
    disk = gpt_image(gpt_dev.root / "disk.img")
    assert lib(gpt_dev, "gpt_set_label", str(disk), str(number), label).returncode == 0
    expected = list(SLOTS)
    expected[number - 1] = label
    assert gpt_labels(disk) == expected


VERITYSETUP_STUB = """#!/bin/bash
# attach NAME DATA HASH ROOTHASH: the fake slot DATA holds the root hash it matches. A slot
# that does not match reads as EIO (a dangling /dev/mapper entry), as under dm-verity.
echo "veritysetup $1 $2" >> "$APPSDK_ROOT/log"
mapper=$APPSDK_ROOT/dev/mapper
case $1 in
    attach) [ ! -e "$APPSDK_ROOT/attach-fails" ] || exit 1
            if [ "$(cat "$3")" = "$5" ]; then echo data > "$mapper/$2"
            else ln -s "$mapper/gone" "$mapper/$2"; fi ;;
    detach) rm -f "$mapper/$2" ;;
esac
"""


def slotted(dev: Device) -> Path:
    """The fake root with a disk vdb (a GPT image) whose partitions udev and sysfs list as
    they do on a device; the slot files vdbN hold the root hash their version matches."""
    dev.put("mounted", b"")
    dev.write_exe(dev.root / "usr/lib/systemd/systemd-veritysetup", VERITYSETUP_STUB)
    (dev.root / "dev/mapper").mkdir()
    disk = gpt_image(dev.root / "dev/vdb")
    for number, label in enumerate(SLOTS, 1):
        version = label.partition("_")[2]
        dev.put(f"dev/vdb{number}", HASH.get(version, "").encode())
        dev.put(f"sys/devices/virtio0/block/vdb/vdb{number}/partition", f"{number}\n".encode())
        (dev.root / f"sys/class/block/vdb{number}").parent.mkdir(parents=True, exist_ok=True)
        (dev.root / f"sys/class/block/vdb{number}").symlink_to(
            f"../../devices/virtio0/block/vdb/vdb{number}")
        (dev.root / "dev/disk/by-partlabel" / label).symlink_to(f"../../vdb{number}")
    for name, version in (("hello_1.0.efi", "1.0"), ("hello_2.0+3-0.efi", "2.0")):
        signed_uki(dev, name, f"root=tmpfs usrhash={HASH[version]}\0".encode())
    return disk


def test_update_frees_a_damaged_slot_so_its_version_is_installed_again(dev: Device) -> None:
    disk = slotted(dev)
    dev.put("dev/vdb4", b"bytes changed after sysupdate wrote the slot")
    dev.put("dev/vdb2", b"the running slot: never checked")
    result = update(dev, "update")
    assert result.returncode == 0, result.stderr
    said = result.stderr.decode()
    assert ("usr_2.0 does not match the root hash its UKI was signed with: marking slot 2.0 "
            "empty so this update installs it again") in said
    assert gpt_labels(disk) == ["esp", "usr_1.0", "verity_1.0", "_empty", "_empty", "var"]
    assert sorted(p.name for p in (dev.root / "efi/EFI/Linux").iterdir()) == ["hello_1.0.efi"]
    log = dev.log()
    assert log.index("veritysetup detach appsdk-check-2.0") < log.index("sysupdate update")
    assert not any("check-1.0" in line for line in log)
    assert list((dev.root / "dev/mapper").iterdir()) == []


def test_update_leaves_a_good_slot_alone(dev: Device) -> None:
    disk = slotted(dev)
    dev.put("dev/mapper/appsdk-check-2.0", b"left by a run that was cut")
    before = disk.read_bytes()
    result = update(dev, "update")
    assert result.returncode == 0, result.stderr
    assert b"does not match" not in result.stderr
    assert disk.read_bytes() == before
    assert (dev.root / "efi/EFI/Linux/hello_2.0+3-0.efi").exists()
    assert [line for line in dev.log() if line.startswith("veritysetup")] == [
        "veritysetup detach appsdk-check-2.0", "veritysetup attach appsdk-check-2.0",
        "veritysetup detach appsdk-check-2.0"]
    assert list((dev.root / "dev/mapper").iterdir()) == []


@pytest.mark.parametrize("how", ["attach-fails", "no-usrhash", "no-verity"])
def test_update_frees_a_slot_it_cannot_check(dev: Device, how: str) -> None:
    disk = slotted(dev)
    if how == "no-usrhash":
        signed_uki(dev, "hello_2.0+3-0.efi", b"root=tmpfs\0")
    elif how == "no-verity":
        (dev.root / "dev/disk/by-partlabel/verity_2.0").unlink()
    else:
        dev.put(how, b"")
    result = update(dev, "update")
    assert result.returncode == 0, result.stderr
    assert b"usr_2.0 does not match" in result.stderr
    assert gpt_labels(disk)[3] == "_empty"
    assert not (dev.root / "efi/EFI/Linux/hello_2.0+3-0.efi").exists()


def test_update_runs_when_the_slot_cannot_be_relabelled(dev: Device) -> None:
    disk = slotted(dev)
    dev.put("dev/vdb4", b"damaged")
    shutil.rmtree(dev.root / "sys/devices/virtio0/block/vdb/vdb5")  # verity_2.0 not in sysfs
    result = update(dev, "update")
    assert result.returncode == 0, result.stderr
    assert b"could not label verity_2.0 _empty" in result.stderr
    assert gpt_labels(disk)[3:5] == ["_empty", "verity_2.0"]
    assert "sysupdate update" in dev.log()


def test_update_checks_no_slot_without_a_uki_or_for_a_verb_that_only_reads(
        dev: Device) -> None:
    disk = slotted(dev)
    dev.put("dev/vdb4", b"damaged")
    before = disk.read_bytes()
    assert update(dev, "list").returncode == 0
    (dev.root / "efi/EFI/Linux/hello_2.0+3-0.efi").unlink()
    assert update(dev, "update").returncode == 0
    assert disk.read_bytes() == before
    assert not any(line.startswith("veritysetup") for line in dev.log())


# --- install_local_update ----------------------------------------------------------------

class HostShell:
    """Runs what install_local_update sends in bash, with the device paths in a fake root."""

    patience = 1.0

    def __init__(self, dev: Device) -> None:
        self.dev = dev

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        root = self.dev.root
        command = (command.replace("/usr/", f"{root}/usr/")
                   .replace("/run/", f"{root}/run/"))
        result = subprocess.run(["bash", "-c", command], env=self.dev.env(),
                                capture_output=True, text=True, timeout=timeout, check=False)
        return result.returncode, result.stdout + result.stderr


def test_install_local_update_keeps_odd_directories_intact(dev: Device) -> None:
    dev.put("mounted", b"")
    dev.put("usr/lib/sysupdate.d/50-usr.transfer", TRANSFER.encode())
    dev.put("usr/bin/appsdk-update", (DEVICE / "appsdk-update").read_bytes())
    (dev.root / "usr/bin/appsdk-update").chmod(0o755)
    out = install_local_update(HostShell(dev), "/mnt/a&b|c %d's")  # type: ignore[arg-type]
    defs = dev.root / "run/appsdk-local-update.d"
    assert f"--definitions={defs} update" in out
    text = (defs / "50-usr.transfer").read_text()
    assert "Path=file:///mnt/a&b|c %%d's/\n" in text
    assert dev.log()[0].startswith("mount -o remount,rw")
    assert dev.log()[-1].startswith("mount -o remount,ro")



# --- boot counting after a refused UKI -----------------------------------------------------

LOADER = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def loader_var(dev: Device, name: str, value: str) -> None:
    # efivarfs: 4 attribute bytes, then the UTF-16LE string with its NUL.
    dev.put(f"sys/firmware/efi/efivars/{name}-{LOADER}",
            b"\x06\x00\x00\x00" + (value + "\0").encode("utf-16-le"))


@pytest.mark.parametrize(("selected", "counted", "blessed"), [
    ("hello_2.0.efi", "hello_2.0+2-1.efi", True),  # a trial boot of 2.0 (systemd 257.10+)
    ("hello_2.0+3.efi", "hello_2.0+2-1.efi", True),  # ids with the counter (before 257.10)
    ("HELLO_2.0.EFI", "hello_2.0+0-3.efi", True),
    (None, "hello_2.0+2-1.efi", True),  # a loader that does not say what it selected
    # The firmware refused hello_9.0 (counted +1 -> +0-1), then systemd-boot booted 1.0.
    ("hello_1.0.efi", "hello_9.0+0-1.efi", False),
    ("hello_2.0.efi", "hello_2.0.1+1-0.efi", False),  # a prefix is not the same entry
])
def test_only_a_try_of_the_booted_entry_is_blessed(dev: Device, selected: str | None,
                                                    counted: str, blessed: bool) -> None:
    loader_var(dev, "LoaderBootCountPath", f"\\EFI\\Linux\\{counted}")
    if selected is not None:
        loader_var(dev, "LoaderEntrySelected", selected)
    entry = lib(dev, "counted_entry")
    assert entry.stdout.decode().strip() == (counted if blessed else "")
    check = dev.run("appsdk-bless-check")
    assert check.returncode == (0 if blessed else 1), check.stderr
    if not blessed:
        assert f"not blessing {counted}".encode() in check.stderr
        assert b"firmware refused" in (dev.root / "console").read_bytes()


def test_bless_check_without_a_counted_boot_lets_bless_boot_speak(dev: Device) -> None:
    assert dev.run("appsdk-bless-check").returncode == 0
    assert lib(dev, "counted_entry").stdout == b""
