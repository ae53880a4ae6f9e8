"""/var sealed to the TPM (var.encrypt: tpm2), proven in QEMU under Secure Boot with swtpm as
the device's TPM. The update story's v1 (conftest.py: the shared hello with var.encrypt:
tpm2) on a disk of its own:

1. first boot: systemd-repart makes /var LUKS2 with a systemd-tpm2 token sealed to PCR 7 and
   to the PCR key's signed PCR 11 policy; a recovery key is shown once on the console;
2. a UKI signed by the team's db key (the firmware runs it) but carrying another PCR key's
   policy, as the newest entry: the initrd cannot unseal /var and stops, saying so;
3. the same disk in another device (a fresh TPM): /var stays locked, the boot stops;
4. back in its own device, with another UKI the team signed (its measurements differ, as a
   new version's do): it opens /var in the initrd without a prompt, the data written on the
   first boot is there, and appsdk-status reports the seal read from the LUKS header;
and in that boot the recovery key alone (a second, read-only mapping) reads the data, a
wrong key nothing; then, on the host, the recovery key opens a key slot of /var (nothing
else does), and the header holds exactly the TPM's and the recovery key's slots.

Updates and rollbacks keep /var readable because the policy is the PCR key's signature, not
one UKI's measurements: boot 4 is that case, and the update story's device (update_story.py,
sealed too) boots v2 as sysupdate installed it, each try of a failing v3 and the fallback
to v2, each opening /var."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from vmlib import (
    SB_EMULATOR,
    TSS_PACKAGES,
    disk_copy,
    esp_put,
    sb_vars,
    vm_boot,
)

import appsdk
from appsdk.core.progress import NullReporter
from appsdk.core.runner import Runner
from appsdk.image import pe
from appsdk.pipeline.stages.rootfs import build_rootfs, recipe_for
from appsdk.pipeline.stages.sign import sign_efi
from appsdk.pipeline.stages.uki import build_uki
from appsdk.pipeline.tools import ensure_tools
from appsdk.spec.appliance import load_appliance
from appsdk.spec.boards import load_board
from appsdk.trust import secureboot

GiB = 1024**3
V1_UP = r"appsdk: IMAGE_ID=hello IMAGE_VERSION=1\.0 booted"
RECOVERY = re.compile(r"appsdk: /var recovery key: ([a-z]{8}(?:-[a-z]{8}){7})")
ROGUE_MARK = "appsdk.test=rogue-pcr-key"
OTHER_MARK = "appsdk.test=another-uki-of-the-team"


def uki_with_pcr_key(uki: Path, app: Path, pcr_keys: secureboot.SecureBootKeys,
                     db_keys: secureboot.SecureBootKeys, mark: str, out: Path) -> Path:
    """`uki`'s kernel, initrd and os-release in a new UKI whose PCR 11 policy is signed by
    `pcr_keys`, signed for Secure Boot by `db_keys` (the team's db key, so the firmware runs
    it). `mark` joins its command line: it says which UKI booted, and it changes PCR 11
    (the stub measures the command line), as any new version does."""
    work = out.parent / f"uki-{out.stem}"
    work.mkdir()
    parts = {name: work / name for name in ("linux", "initrd")}
    for name, path in parts.items():
        path.write_bytes(pe.read_section(uki, f".{name}"))
    board = load_board("x86-uefi")
    # The stub and os-release come from the same tree the build used (cached rootfs).
    rootfs = build_rootfs(recipe_for(load_appliance(app), board), Runner(), NullReporter())
    tree = work / "tree"
    stub = f"usr/lib/systemd/boot/efi/linux{board.efi_arch}.efi.stub"
    (tree / stub).parent.mkdir(parents=True)
    shutil.copyfile(rootfs.tree / stub, tree / stub)
    (tree / "usr/lib/os-release").write_text(pe.read_text(uki, ".osrel"))
    cmdline = (*pe.read_text(uki, ".cmdline").split(), mark)
    tools = ensure_tools(Runner(), NullReporter())
    unsigned = build_uki(board, tree, parts["linux"], pe.read_text(uki, ".uname").strip(),
                         parts["initrd"], cmdline, work / "unsigned.efi", tools, Runner(),
                         pcr_keys=pcr_keys)
    return sign_efi(unsigned.path, out, db_keys, 0, tools, Runner())


def boot_until_locked(disk: Path, vars_fd: Path, tpm: Path, logs: Path,
                      name: str) -> dict[str, Any]:
    """A boot that must stop in the initrd: the kernel's command line, the lock message."""
    with vm_boot(disk, vars_fd, logs, name, emulator=SB_EMULATOR, tpm=tpm) as vm:
        vm.shell.expect(r"Kernel command line: ", 300)
        # The unit's OnFailure= stops the boot: no PID 1 of the image starts.
        vm.shell.expect(r"appsdk-factory-etc: [^\r\n]*stopping the boot", 900)
        time.sleep(5)
        vm.proc.kill()
        vm.proc.wait(30)
        console = vm.console_log.read_text(errors="replace")
    # Whole lines, from the transcript (the console delivers them in pieces).
    line = {name: re.search(pattern + r"[^\r\n]*", console) for name, pattern in (
        ("cmdline", r"Kernel command line: "), ("locked", r"appsdk: /var is locked: "),
        ("stopped", r"appsdk-factory-etc: [^\r\n]*stopping the boot"))}
    return {"console": console, **{name: found.group(0) if found else ""
                                   for name, found in line.items()}}


def host_check(disk: Path, recovery_key: str) -> dict[str, Any]:
    """On the host, /var's LUKS2 header: what it holds, and which passphrases open a key
    slot (cryptsetup --test-passphrase: no device-mapper needed, which these hosts lack)."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    part = next(p for p in table["partitions"] if p.get("name") == "var")
    sector = int(table.get("sectorsize", 512))
    # A loop device over the partition alone: no partition nodes needed (a container's
    # kernel may not make them).
    var = subprocess.run(["losetup", "--find", "--show", "--read-only",
                          f"--offset={int(part['start']) * sector}",
                          f"--sizelimit={int(part['size']) * sector}", str(disk)],
                         check=True, capture_output=True, text=True).stdout.strip()

    def opens(passphrase: str) -> bool:
        return subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file=-", var],
                              input=passphrase.encode(), capture_output=True,
                              check=False).returncode == 0

    try:
        dump = subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", var],
                              check=True, capture_output=True, text=True).stdout
        return {"header": json.loads(dump), "recovery_opens": opens(recovery_key),
                "empty_opens": opens(""), "other_key_opens": opens(recovery_key[::-1])}
    finally:
        subprocess.run(["losetup", "-d", var], check=True)


def read_with_key(sh, key: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """On the device, /var's data read through a second, read-only mapping that `key` alone
    opens (a key file, and no TPM option: systemd-cryptsetup tries only the file, headless),
    over a loop device of the partition (the running /var holds the partition itself)."""
    return sh.run(  # type: ignore[no-any-return]
        # A subshell: its exit must not end the login shell.
        f"(umask 077; printf %s '{key}' > /run/test-key; mkdir -p /run/varcheck; "
        "loop=$(losetup -f --show -r /dev/disk/by-partlabel/var) || exit 9; "
        "/usr/lib/systemd/systemd-cryptsetup attach varcheck $loop /run/test-key "
        "read-only,headless=true,tries=1 && "
        "mount -o ro,noload /dev/mapper/varcheck /run/varcheck && "
        "cat /run/varcheck/lib/appsdk-test-token; rc=$?; "
        "umount /run/varcheck 2>/dev/null; "
        "/usr/lib/systemd/systemd-cryptsetup detach varcheck 2>/dev/null; "
        "losetup -d $loop; rm -f /run/test-key; exit $rc)", timeout=300)


@pytest.fixture(scope="module")
def sealed(sealed_app: Path, sealed_v1: appsdk.BuildResult,
           sb_keyset: secureboot.SecureBootKeys, tmp_path_factory: pytest.TempPathFactory,
           vm_logs: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tpm")
    app, built = sealed_app, sealed_v1  # the update story's v1 (conftest.py)
    assert set(TSS_PACKAGES) <= set(load_appliance(app).base.packages)  # one rootfs
    facts: dict[str, Any] = {"build_s": round(built.seconds)}
    rogue = secureboot.generate(tmp / "rogue", "Another product", "other", Runner())
    uki = built.artifacts["uki"].path
    rogue_uki = uki_with_pcr_key(uki, app, rogue, sb_keyset, ROGUE_MARK, tmp / "rogue.efi")
    other_uki = uki_with_pcr_key(uki, app, sb_keyset, sb_keyset, OTHER_MARK, tmp / "other.efi")
    disk = disk_copy(built.image, tmp / "disk.img", 6 * GiB)
    vars_fd = sb_vars(tmp, sb_keyset)
    own_tpm, other_tpm = tmp / "tpm-own", tmp / "tpm-other"

    with vm_boot(disk, vars_fd, vm_logs, "tpm-first", emulator=SB_EMULATOR,
                 tpm=own_tpm) as vm:
        started = time.monotonic()
        vm.shell.expect(V1_UP, 900)
        facts["first_up_s"] = round(time.monotonic() - started)
        vm.shell.login(timeout=600)  # the prompt comes after the health check
        facts["token"] = vm.shell.output("head -c 8 /dev/urandom | od -An -tx1 | "
                                         "tr -d ' \\n' | tee /var/lib/appsdk-test-token")
        vm.shell.run("timeout 600 bash -c 'until [ -e /var/lib/appsdk/recovery-key-enrolled ];"
                     " do sleep 2; done'", timeout=620)
        facts["recovery_unit"] = vm.shell.output(
            "systemctl show -p Result --value appsdk-var-recovery.service")
        facts["lsblk"] = vm.shell.output("lsblk -lno NAME,TYPE,FSTYPE /dev/mapper/var "
                                         "/dev/disk/by-partlabel/var")
        facts["repart_d"] = vm.shell.output("cat /usr/lib/repart.d/50-var.conf")
        facts["journal_key"] = vm.shell.run("journalctl -b --no-pager | grep -c "
                                            "'recovery key: [a-z]'")[1].strip()
        vm.shell.send("systemctl poweroff")
        vm.wait_exit(180)
        facts["first_console"] = vm.console_log.read_text(errors="replace")
    found = RECOVERY.search(facts["first_console"])
    assert found, "no recovery key on the first boot's console"
    facts["recovery_key"] = found.group(1)

    esp_put(disk, rogue_uki, "hello_9.2+1.efi")
    facts["rogue"] = boot_until_locked(disk, vars_fd, own_tpm, vm_logs, "tpm-rogue-pcr-key")
    facts["other_device"] = boot_until_locked(disk, vars_fd, other_tpm, vm_logs,
                                              "tpm-other-device")

    # Back in its own device, with another UKI the team signed (as an update brings one):
    # it measures differently, and its policy carries the team's PCR key's signature.
    esp_put(disk, other_uki, "hello_9.3+1.efi")
    with vm_boot(disk, vars_fd, vm_logs, "tpm-again", emulator=SB_EMULATOR,
                 tpm=own_tpm) as vm:
        started = time.monotonic()
        facts["again_cmdline"] = vm.shell.expect(r"Kernel command line: ([^\r\n]*)",
                                                 300).group(1)
        vm.shell.expect(V1_UP, 900)
        facts["again_up_s"] = round(time.monotonic() - started)
        vm.shell.login(timeout=600)  # the prompt comes after the health check
        facts["token_again"] = vm.shell.output("cat /var/lib/appsdk-test-token")
        # After the two lock-outs: the data is intact for the recovery key too, and a wrong
        # key reads nothing (so the key file, not the TPM, opened the mapping).
        facts["wrong_key"] = read_with_key(vm.shell, facts["recovery_key"][::-1])
        facts["recovery_read"] = read_with_key(vm.shell, facts["recovery_key"])
        facts["status"] = json.loads(vm.shell.output("appsdk-status --json"))
        facts["factory_etc"] = vm.shell.output("journalctl -b -o cat --no-pager "
                                               "-u appsdk-factory-etc.service | tail -5")
        vm.shell.send("systemctl poweroff")
        vm.wait_exit(180)
        facts["again_console"] = vm.console_log.read_text(errors="replace")
    (vm_logs / "figures-tpm.json").write_text(json.dumps(
        {k: facts[k] for k in ("build_s", "first_up_s", "again_up_s")}) + "\n")
    facts["host"] = host_check(disk, facts["recovery_key"])
    return facts


def test_first_boot_makes_var_luks2_sealed_to_the_tpm(sealed: dict[str, Any]) -> None:
    lines = sealed["lsblk"].splitlines()  # the partition and its mapping, in either order
    assert any(re.match(r"var\s+crypt\s+ext4", line) for line in lines), sealed["lsblk"]
    assert any(re.match(r"vda\d+\s+part\s+crypto_LUKS", line) for line in lines), lines
    assert "Encrypt=tpm2" in sealed["repart_d"] and "KeyFile" not in sealed["repart_d"]
    assert sealed["recovery_unit"] == "success"
    # The recovery key went to the console only, never to the journal.
    assert sealed["journal_key"] == "0"
    # No passphrase prompt, and the TPM path was taken (not a fallback that headless stops).
    assert "Please enter passphrase" not in sealed["first_console"]
    assert "Password querying disabled" not in sealed["first_console"]


def test_a_uki_with_another_pcr_key_does_not_open_var(sealed: dict[str, Any]) -> None:
    rogue = sealed["rogue"]
    assert ROGUE_MARK in rogue["cmdline"]  # the firmware ran it: the team's db key signed it
    # systemd-cryptsetup's own reason, on the console: no signature by the key /var is
    # sealed to matches this UKI's PCR 11.
    assert "No TPM2 metadata matching the current system state" in rogue["console"]
    assert "the TPM refused to unseal it" in rogue["stopped"]
    assert "PCR 7 " in rogue["locked"] and "recovery key" in rogue["locked"]


def test_another_device_does_not_open_var(sealed: dict[str, Any]) -> None:
    other = sealed["other_device"]
    assert ROGUE_MARK not in other["cmdline"]  # v1 itself (the rogue entry has no tries)
    assert "usr_1.0" in other["cmdline"]
    # Another TPM has another storage root key: it cannot even load the sealed object.
    assert "Failed to unseal secret using TPM2" in other["console"]
    assert "/var is locked" in other["locked"]


def test_its_own_device_opens_var_under_another_team_uki_and_the_data_is_there(
        sealed: dict[str, Any]) -> None:
    assert OTHER_MARK in sealed["again_cmdline"]  # not the UKI that sealed /var
    assert sealed["token_again"] == sealed["token"]
    assert sealed["status"]["var"] == {"encrypted": True, "unlock": "tpm2", "pcrs": [7],
                                       "pcr_key_pcrs": [11], "pcr_key_is_uki_key": True,
                                       "recovery_key": True}
    assert "/var is locked" not in sealed["again_console"]


def test_the_recovery_key_opens_var_and_the_header_holds_no_other_key(
        sealed: dict[str, Any]) -> None:
    status, out = sealed["recovery_read"]
    assert status == 0 and out.strip().endswith(sealed["token"]), out
    status, out = sealed["wrong_key"]
    assert status != 0 and sealed["token"] not in out, out
    host = sealed["host"]
    assert host["recovery_opens"]  # the key shown once on the console opens a key slot
    assert not host["empty_opens"] and not host["other_key_opens"]
    header = host["header"]
    tokens = sorted(t["type"] for t in header["tokens"].values())
    assert tokens == ["systemd-recovery", "systemd-tpm2"], tokens
    assert len(header["keyslots"]) == 2  # the TPM's and the recovery key's, nothing else
    tpm2 = next(t for t in header["tokens"].values() if t["type"] == "systemd-tpm2")
    assert tpm2["tpm2-pcrs"] == [7] and tpm2["tpm2_pubkey_pcrs"] == [11]
