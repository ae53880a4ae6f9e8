"""Secure Boot, proven in QEMU with OVMF's Secure Boot build (q35-ovmf-sb): an image built
with secure_boot enrolls its own key set on a machine in setup mode and from then on boots
with Secure Boot enforced; a UKI with one byte changed, and a UKI signed by another key,
placed on the ESP as the newest entry are refused by the firmware, and the machine boots
its signed version in the same power-on. The second refusal is on another machine, started
from a variable store prepared with the key set (`appsdk keys vars`). Everything asserted
is what the device and its firmware print on the console.

One build for all of it, two boots and the start of a third."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vmlib import (
    SB_EMULATOR,
    disk_copy,
    efi_global,
    esp_put,
    gzip_updates,
    hello_copy,
    ovmf_vars,
    tampered,
    vm_boot,
)

import appsdk
from appsdk.contract.buildinfo import load_record
from appsdk.core.progress import NullReporter
from appsdk.core.runner import Runner
from appsdk.image import pcrsig
from appsdk.image.inspect import inspect, signers
from appsdk.pipeline.stages.sign import sign_efi
from appsdk.pipeline.tools import ToolsTree, cached_tools, ensure_tools
from appsdk.trust import keys, pkcs11, secureboot
from appsdk.trust.secureboot import PCR

GiB = 1024**3
SB = SB_EMULATOR
V1_UP = r"appsdk: IMAGE_ID=hello IMAGE_VERSION=1\.0 booted"
ENROLLED = "Custom Secure Boot keys successfully enrolled, rebooting the system now!"


def refused_then_v1(disk: Path, vars_fd: Path, logs: Path, name: str, entry: str,
                    state: bool = False, whole: bool = True) -> dict[str, Any]:
    """Boot with `entry` the newest UKI on the ESP: what the firmware and the device say
    (`state`: and the device's Secure Boot state in detail). Not `whole`: only up to the
    command line of the kernel that runs after the refusal (then the power goes)."""
    facts: dict[str, Any] = {}
    with vm_boot(disk, vars_fd, logs, name, emulator=SB) as vm:
        # systemd-boot has counted the try (+1 -> +0-1) before the firmware refuses it.
        counted = entry.replace("+1.efi", "+0-1.efi")
        pattern = r"Error loading \\EFI\\Linux\\" + re.escape(counted) + r": ([^\r\n\x1b]+)"
        facts["refusal"] = vm.shell.expect(pattern, 300).group(1).strip()
        if not whole:
            vm.shell.expect(r"Kernel command line: [^\r\n]*\r?\n", 300)
            vm.proc.kill()
            vm.proc.wait(30)
            facts["console"] = vm.console_log.read_text(errors="replace")
            return facts
        vm.shell.expect(V1_UP, 600)
        vm.shell.login()
        # Once the boot is confirmed, systemd-bless-boot has had its say about the entry.
        vm.shell.run("timeout 180 bash -c 'until systemctl -q is-active boot-complete.target;"
                     " do sleep 1; done'", timeout=200)
        facts["bless"] = vm.shell.output("journalctl -b -u systemd-bless-boot.service -o cat "
                                         "--no-pager | tail -5")
        facts["esp"] = sorted(vm.shell.output("ls /efi/EFI/Linux").split())
        facts["secureboot"] = efi_global(vm.shell, "SecureBoot")
        if state:
            facts["setupmode"] = efi_global(vm.shell, "SetupMode")
            facts["bootctl"] = vm.shell.output("bootctl status --no-pager 2>/dev/null | "
                                               "grep -i 'secure boot'")
            facts["lockdown"] = vm.shell.output("cat /sys/kernel/security/lockdown")
            facts["cmdline"] = vm.shell.output("cat /proc/cmdline")
            facts["esp_keys"] = vm.shell.output("ls /efi/loader/keys/auto")
        vm.shell.send("systemctl poweroff")
        vm.wait_exit(120)
        facts["console"] = vm.console_log.read_text(errors="replace")
    return facts


PIN = "7531"


def softhsm_keys(tmp: Path, tools: ToolsTree, made: secureboot.SecureBootKeys) -> dict[str, str]:
    """Move the db and PCR keys of `made` into a SoftHSM token and shred every PEM copy of
    them: from here on they exist only inside the token. Returns their PKCS#11 URIs by role
    (PIN from a file)."""
    store = tmp / "hsm" / "tokens"
    store.mkdir(parents=True)
    conf = tmp / "hsm" / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {store}\nobjectstore.backend = file\n")
    pin = tmp / "hsm" / "pin"
    pin.write_text(PIN)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ[pkcs11.BIND_ENV] = str(store)
    box = tools.sandbox(binds=(store, pin.parent))
    box.run(Runner(), ["softhsm2-util", "--init-token", "--free", "--label", "appsdk",
                       "--pin", PIN, "--so-pin", "86420"])
    uris = {}
    for index, role in enumerate(("db", PCR), start=1):
        pkcs8 = tmp / "hsm" / f"{role}.p8"
        subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(made.key(role)),
                        "-out", str(pkcs8)], check=True)
        box.run(Runner(), ["softhsm2-util", "--import", str(pkcs8), "--token", "appsdk",
                           "--label", role, "--id", f"{index:02d}", "--pin", PIN])
        for copy in (pkcs8, made.key(role)):
            subprocess.run(["shred", "-u", str(copy)], check=True)
        uris[role] = f"pkcs11:token=appsdk;object={role};type=private?pin-source=file:{pin}"
    return uris


def private_key_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and b"PRIVATE KEY-----" in p.read_bytes()[:1 << 16]]


@pytest.fixture(scope="module")
def secure(root_required: None, signing_key: keys.SigningKey, update_port: int,
           tmp_path_factory: pytest.TempPathFactory, vm_logs: Path) -> Iterator[dict[str, Any]]:
    saved = {name: os.environ.get(name) for name in ("SOFTHSM2_CONF", pkcs11.BIND_ENV)}
    try:
        yield secure_boot_scenarios(signing_key, update_port, tmp_path_factory, vm_logs)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def secure_boot_scenarios(signing_key: keys.SigningKey, update_port: int,
                          tmp_path_factory: pytest.TempPathFactory,
                          vm_logs: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("secure-boot")
    # The db key lives in an HSM (SoftHSM through OpenSSL's pkcs11 provider), as a release
    # pipeline keeps it: `appsdk keys secure-boot --db-key pkcs11:... --db-cert` records its
    # URI after the token proved it holds the certificate's key. PK and KEK, needed only to
    # make the enrollment payloads, are then taken offline.
    tools = ensure_tools(Runner(), NullReporter())
    made = secureboot.generate(tmp / "made", "Hello appliance", "hello", Runner())
    uris = softhsm_keys(tmp, tools, made)
    keyset = secureboot.generate(tmp / "keys" / "secure-boot", "Hello appliance", "hello",
                                 Runner(), db_key=pkcs11.parse_uri(uris["db"]),
                                 db_cert=made.db_cert, pcr_key=pkcs11.parse_uri(uris[PCR]),
                                 pcr_cert=made.cert(PCR), hsm=tools.sandbox())
    for key in (made.key("PK"), made.key("KEK"), keyset.key("PK"), keyset.key("KEK")):
        subprocess.run(["shred", "-u", str(key)], check=True)
    app = tmp / "hello"
    hello_copy(app)
    config = app / "appliance.yaml"
    config.write_text(config.read_text() + f"secure_boot:\n  keys: {keyset.directory}\n")
    gzip_updates(app)  # nothing here is updated
    facts: dict[str, Any] = {"key_files_before": private_key_files(tmp),
                             "keyset": sorted(p.name for p in keyset.directory.iterdir())}
    built = appsdk.build(app, board="x86-uefi", version="1.0", output=tmp / "build",
                         key_dir=signing_key.home,
                         update_url=f"http://10.0.2.2:{update_port}/")
    facts["key_files_after"] = private_key_files(tmp)
    uki = built.artifacts["uki"].path
    # The PCR key in the token signed the UKI's PCR 11 policy (ukify -> systemd-measure
    # -> OpenSSL's pkcs11 provider); the build checked it with OpenSSL, and so does this.
    facts["pcrsig"] = pcrsig.verify(uki, keyset, tools.sandbox(), Runner())
    facts["record_pcr"] = load_record(built.output).secure_boot
    facts["pcr_fingerprint"] = keyset.pcr_fingerprint()

    # The two UKIs the firmware must refuse: one byte of the signed UKI changed (in the
    # middle: the kernel), and the same UKI with its signature replaced by another key's.
    bad_uki = tampered(uki, tmp / "tampered.efi")
    tools = cached_tools()
    assert tools is not None  # the build made it
    stripped = tmp / "stripped" / "unsigned.efi"
    stripped.parent.mkdir()
    shutil.copyfile(uki, stripped)
    tools.sandbox(binds=(stripped.parent,)).run(Runner(), ["sbattach", "--remove",
                                                           str(stripped)])
    rogue = secureboot.generate(tmp / "rogue", "Rogue", "rogue", Runner())
    foreign = sign_efi(stripped, tmp / "foreign.efi", rogue, 0, tools, Runner())

    facts["db_subject"] = "Hello appliance Secure Boot db"
    # What `appsdk inspect` reads off the image and the attacker's copy (no boot needed).
    facts["inspect"] = inspect(built.output)["secure_boot"]
    facts["foreign_signers"] = signers(foreign, Runner())
    disk = disk_copy(built.image, tmp / "disk.img", 6 * GiB)
    vars_fd = ovmf_vars(tmp)  # OVMF's empty variable store: setup mode, no keys

    # First power-on: systemd-boot finds the machine in setup mode and enrolls the ESP's
    # key set, then resets the machine (-no-reboot: QEMU exits).
    with vm_boot(disk, vars_fd, vm_logs, "sb-enroll", emulator=SB,
                 retry_early_panic=False) as vm:
        vm.shell.expect(ENROLLED, 180)
        facts["enroll_exit"] = vm.wait_exit(60)
        facts["enroll_console"] = vm.console_log.read_text(errors="replace")

    # From then on Secure Boot is enforced. The attacker's copies go on the ESP, each as
    # the newest entry with one boot try (as an update would install it): refused by the
    # firmware, then v1 boots in the same power-on. (The boot with the tampered UKI is also
    # the one whose Secure Boot state is read: one boot fewer.)
    esp_put(disk, bad_uki, "hello_9.0+1.efi")
    facts["tampered"] = refused_then_v1(disk, vars_fd, vm_logs, "sb-tampered",
                                        "hello_9.0+1.efi", state=True)
    # The UKI signed by another key, on a second machine that starts from a variable store
    # prepared with the key set (appsdk keys vars): Secure Boot is enforced from its very
    # first power-on, with no enrollment.
    second = disk_copy(built.image, tmp / "disk2.img", 6 * GiB)
    prepared = secureboot.write_vars(keyset, "hello", Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
                                     tmp / "prepared.fd", Runner())
    esp_put(second, foreign, "hello_9.1+1.efi")
    # What follows the refusal was shown whole on the first machine: here the boot ends
    # once v1's kernel has its command line (the rest of a boot is about 2 min under TCG).
    facts["foreign"] = refused_then_v1(second, prepared, vm_logs, "sb-foreign",
                                       "hello_9.1+1.efi", whole=False)
    return facts


def test_the_first_boot_in_setup_mode_enrolls_the_key_set_and_resets(
        secure: dict[str, Any]) -> None:
    console = secure["enroll_console"]
    assert r"Enrolling secure boot keys from directory: \loader\keys\auto" in console
    assert ENROLLED in console
    assert "Linux version" not in console  # nothing booted before the keys were in


def test_then_it_boots_with_secure_boot_enforced(secure: dict[str, Any]) -> None:
    state = secure["tampered"]  # read on v1, booted after the refusal
    # 4 attribute bytes, then the value: SecureBoot 1, SetupMode 0 (user mode).
    assert state["secureboot"].split()[-1] == "01", state["secureboot"]
    assert state["setupmode"].split()[-1] == "00", state["setupmode"]
    assert "enabled (user)" in state["bootctl"], state["bootctl"]
    console = state["console"]
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    assert "secureboot: Secure boot enabled" in console
    # The kernel put the enrolled db certificate in its platform keyring.
    assert f"Loaded X.509 cert '{secure['db_subject']}" in console
    assert "[integrity]" in state["lockdown"] or "[confidentiality]" in state["lockdown"]
    assert "systemd.import_credentials=no" in state["cmdline"]
    assert sorted(state["esp_keys"].split()) == ["KEK.auth", "PK.auth", "db.auth"]


@pytest.mark.parametrize("case", ["tampered", "foreign"])
def test_a_refused_uki_falls_back_to_the_signed_one(secure: dict[str, Any], case: str) -> None:
    facts = secure[case]
    entry = "hello_9.0" if case == "tampered" else "hello_9.1"
    # OVMF says why ("Access denied": the image's hash or signer is not in db).
    assert facts["refusal"].lower() in ("access denied", "security violation"), facts
    console = facts["console"]
    # The refusal comes before any kernel, and the kernel that runs is v1's, under SB.
    assert console.index("Error loading") < console.index("Linux version")
    assert "systemd.verity_usr_data=/dev/disk/by-partlabel/usr_1.0" in console
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    assert "Enrolling secure boot keys" not in console  # enrolled before, or prepared
    if case == "foreign":  # that boot ended at v1's kernel command line
        return
    assert facts["secureboot"].split()[-1] == "01"
    # The refused entry used its one try and now sorts after v1: no brick, no loop. Its
    # stale LoaderBootCountPath is not blessed (that would drop its counter, and systemd-boot
    # would try it first on every later boot, ending at the firmware's menu each time).
    assert f"appsdk: not blessing {entry}+0-1.efi" in facts["bless"], facts["bless"]
    assert f"{entry}+0-1.efi" in facts["esp"], facts["esp"]
    assert f"{entry}.efi" not in facts["esp"], facts["esp"]
    assert "hello_1.0.efi" in facts["esp"]


def test_the_db_key_in_an_hsm_signs_with_no_private_key_file_on_disk(
        secure: dict[str, Any]) -> None:
    """The image that enrolled and boots under Secure Boot above was signed by the db key in
    SoftHSM: the key set holds its URI, not a key, and no PEM private key existed in the
    test's tree before or after the build (the build's work directory is inside it)."""
    assert secure["keyset"] == ["KEK.auth", "KEK.crt", "PK.auth", "PK.crt", "db.auth",
                                "db.crt", "db.uri", "pcr.crt", "pcr.uri"]
    assert secure["key_files_before"] == [] and secure["key_files_after"] == []


def test_the_pcr_key_in_the_hsm_signed_the_ukis_pcr_11_policy(secure: dict[str, Any]) -> None:
    """ukify's default boot phases (enter-initrd, then leave-initrd, sysinit, ready), each
    for PCR 11 in sha256, by the PCR key that stays in SoftHSM; build.json names it."""
    assert len(secure["pcrsig"]) == 4, secure["pcrsig"]
    assert {s.key_fingerprint for s in secure["pcrsig"]} == {secure["pcr_fingerprint"]}
    assert len({s.policy for s in secure["pcrsig"]}) == 4  # one policy per phase
    assert secure["record_pcr"].pcr_key_sha256 == secure["pcr_fingerprint"]
    assert secure["inspect"]["pcr_policy"] == {"EFI/Linux/hello_1.0.efi": {
        "key_sha256": [secure["pcr_fingerprint"]], "pcrs": [11], "banks": ["sha256"],
        "phases": 4}}


def test_inspect_names_the_signer_of_every_efi_binary(secure: dict[str, Any]) -> None:
    db = f"CN = {secure['db_subject']}"
    assert secure["inspect"]["signed"] == {
        "EFI/BOOT/BOOTX64.EFI": [db], "EFI/systemd/systemd-bootx64.efi": [db],
        "EFI/Linux/hello_1.0.efi": [db]}
    assert secure["inspect"]["enroll_keys"] == ["auto"]
    assert secure["foreign_signers"] == ["CN = Rogue Secure Boot db"]
