"""Serial-console provisioning against a booted hello device, through a proxy that behaves
like a serial line (rate limit, dropped and flipped bytes). Boot 1: `appsdk provision
serial` with a plan (identity, a 300 KB binary file, an ssh key, a credential, an update
URL), then pushes over a noisy line, then v2 is installed from files on the device. Boot 2
(a cold restart of the same disk): v2 runs, with everything provisioned still there and the
hostname in effect. (Three boots before: a reboot on v1 between them proved nothing the
reboot into v2 does not.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lineproxy import UART_RATE, LineProxy
from vmlib import Vm, disk_copy, free_port, ovmf_vars, start

import appsdk
from appsdk.core.runner import Runner
from appsdk.deliver.console import SerialConsole, Shell
from appsdk.deliver.filepush import PushFailed, push_bytes
from appsdk.deliver.provision_serial import install_local_update
from appsdk.emulate.qemu import VmSpec, qemu_argv
from appsdk.spec.boards import load_board
from appsdk.trust import keys as appsdk_keys
from appsdk.update.release import release

GiB = 1024**3
BANNER = r"appsdk: IMAGE_ID=hello IMAGE_VERSION=(\S+) booted"

PLAN = """\
plan: 1
hostname: hello-{serial}
update_url: http://updates.example.com/{vars.channel}/
authorized_keys: [factory.pub]
credentials: {api-token: token.txt}
files:
  - {src: blob.bin, dest: /var/lib/hello/blob.bin, mode: "0600"}
devices:
  - serial: SN0042
    vars: {channel: beta}
  - serial: SN0043
    hostname: lab-bench
    vars: {channel: stable}
"""


def boot(disk: Path, vars_fd: Path, logs: Path, name: str,
         extra: tuple[str, ...] = ()) -> tuple[Vm, LineProxy]:
    """A boot behind a line proxy of its own (a new one for a retried boot)."""
    proxies: list[LineProxy] = []

    def launch(boot_name: str) -> Vm:
        for old in proxies:
            old.close()
        qemu_port = free_port()
        spec = VmSpec(board=load_board("x86-uefi"), disk=disk, snapshot=False,
                      serial_port=qemu_port, accel="tcg", no_reboot=True, vars_file=vars_fd)
        proxies.append(LineProxy(qemu_port, seed=42, rate=UART_RATE))
        return Vm(qemu_argv(spec) + list(extra), proxies[-1].port, logs, boot_name)

    vm = start(launch, name, disk, vars_fd)
    return vm, proxies[-1]


def updates_disk(v2: appsdk.BuildResult, key: appsdk_keys.SigningKey, work: Path) -> Path:
    """v2's signed release on a disk of its own: the files `provision serial --update`
    would have pushed (130 MB over an emulated UART takes most of an hour)."""
    rel = release(work / "rel", [v2.output], key, Runner()).directory
    updates = work / "updates.img"
    subprocess.run(["mkfs.ext4", "-q", "-L", "updates", "-d", str(rel), str(updates), "400M"],
                   check=True)
    return updates


def reconnect(vm: Vm, proxy: LineProxy, logs: Path, name: str) -> Shell:
    vm.console.close()
    vm.console = SerialConsole(f"socket://127.0.0.1:{proxy.port}")
    vm.shell = Shell(vm.console, log=logs / f"{name}.console.log")
    return vm.shell


@pytest.fixture(scope="module")
def provisioned(hello_v1: appsdk.BuildResult, hello_v2: appsdk.BuildResult,
                signing_key: appsdk_keys.SigningKey, tmp_path_factory: pytest.TempPathFactory,
                vm_logs: Path) -> dict[str, object]:
    work = tmp_path_factory.mktemp("serial")
    blob = os.urandom(300 * 1024)
    (work / "blob.bin").write_bytes(blob)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFactoryKeyForTestsOnly factory@bench\n"
    (work / "factory.pub").write_text(key)
    (work / "token.txt").write_bytes(b"s3cret-\x00-binary\n")
    (work / "plan.yaml").write_text(PLAN)
    disk = disk_copy(hello_v1.image, work / "disk.img", 6 * GiB)
    vars_fd = ovmf_vars(work)
    facts: dict[str, object] = {"blob": hashlib.sha256(blob).hexdigest(), "key": key}

    updates = updates_disk(hello_v2, signing_key, work)
    extra = ("-drive", f"if=none,id=upd,format=raw,readonly=on,file={updates}",
             "-device", "virtio-blk-pci,drive=upd")
    vm, proxy = boot(disk, vars_fd, vm_logs, "serial-boot1", extra)
    try:
        assert vm.shell.expect(BANNER, 300).group(1) == "1.0"
        vm.console.close()  # the CLI opens the port itself, as on a bench
        cli = subprocess.run(
            [sys.executable, "-m", "appsdk.cli", "provision", "serial",
             f"socket://127.0.0.1:{proxy.port}", str(work / "plan.yaml"), "--device", "SN0042",
             "--json", "--log", str(vm_logs / "serial-provision.console.log")],
            capture_output=True, text=True, timeout=600)
        facts["cli_rc"], facts["cli_err"] = cli.returncode, cli.stderr[-3000:]
        facts["report"] = json.loads(cli.stdout.strip().splitlines()[-1])

        # A noisy line: bytes dropped and flipped both ways. The file must arrive intact.
        sh = reconnect(vm, proxy, vm_logs, "serial-noisy")
        sh.attach()
        # 160 KiB at the UART rate: about 15 s on the line, and at this noise rate several
        # disturbed chunks (each 16 KiB chunk is hit with p ~ 0.5) that must be sent again.
        noisy = os.urandom(160 * 1024)
        proxy.drop = proxy.flip = 2e-5
        sent, sending = proxy.sent, proxy.sending
        facts["noisy_push"] = push_bytes(sh, noisy, "/var/lib/hello/noisy.bin",
                                         line_rate=UART_RATE)
        facts["line"] = (proxy.sent - sent, proxy.sending - sending)
        facts["noise"] = (proxy.dropped, proxy.flipped)
        # A line far too noisy: a clear failure, and no file under the name.
        proxy.drop = 0.02
        try:
            push_bytes(sh, noisy, "/var/lib/hello/hopeless.bin", line_rate=UART_RATE,
                       max_failures=3)
            facts["hopeless"] = "pushed?!"
        except PushFailed as exc:
            facts["hopeless"] = str(exc)
        proxy.drop = proxy.flip = 0
        sh.resync()
        facts["noisy_on_device"] = sh.output("sha256sum /var/lib/hello/noisy.bin").split()[0]
        facts["noisy_want"] = hashlib.sha256(noisy).hexdigest()
        facts["hopeless_files"] = sh.output("ls /var/lib/hello/")
        facts["machine_id"] = sh.output("cat /etc/machine-id")
        # The on-device half of `provision serial --update`, from the second disk.
        sh.output("mkdir -p /mnt/upd && mount -o ro LABEL=updates /mnt/upd")
        facts["install"] = install_local_update(sh, "/mnt/upd")
        sh.send("umount /mnt/upd; sync; systemctl poweroff")
        assert vm.wait_exit(120) == 0
    finally:
        vm.close()
        proxy.close()

    vm, proxy = boot(disk, vars_fd, vm_logs, "serial-boot2")
    try:
        sh = vm.shell
        facts["version2"] = sh.expect(BANNER, 300).group(1)
        sh.attach()
        facts["hostname"] = sh.output("hostname")
        facts["etc_hostname"] = sh.output("cat /etc/hostname")
        facts["blob_after"] = sh.output("sha256sum /var/lib/hello/blob.bin").split()[0]
        facts["blob_mode"] = sh.output("stat -c %a /var/lib/hello/blob.bin")
        facts["keys_after"] = sh.output("cat /root/.ssh/authorized_keys")
        facts["cred_after"] = sh.output("od -An -c /run/credstore/api-token | tr -s ' '")
        facts["transfer"] = sh.output("grep ^Path=http /etc/sysupdate.d/50-usr.transfer")
        facts["status"] = json.loads(sh.output("appsdk-status --json"))
        facts["machine_id2"] = sh.output("cat /etc/machine-id")
        sh.send("systemctl poweroff")
        vm.wait_exit(120)
    finally:
        vm.close()
        proxy.close()
    return facts


def test_cli_provisions_from_a_plan(provisioned: dict[str, object]) -> None:
    assert provisioned["cli_rc"] == 0, provisioned["cli_err"]
    report = provisioned["report"]
    assert isinstance(report, dict)
    assert report["result"] == "ok" and report["serial"] == "SN0042"
    assert report["hostname"] == "hello-SN0042"
    assert report["status"]["hostname"] == "hello-SN0042"
    assert report["status"]["serial"] == "SN0042"
    assert report["status"]["running"] == "1.0"
    blob = next(f for f in report["files"] if f["dest"] == "/var/lib/hello/blob.bin")
    assert blob["sha256"] == provisioned["blob"] and blob["bytes"] == 300 * 1024


def test_identity_and_files_survive_a_reboot(provisioned: dict[str, object]) -> None:
    assert provisioned["hostname"] == "hello-SN0042"
    assert provisioned["etc_hostname"] == "hello-SN0042"
    assert provisioned["blob_after"] == provisioned["blob"]
    assert provisioned["blob_mode"] == "600"
    assert provisioned["keys_after"] == str(provisioned["key"]).strip()
    assert provisioned["cred_after"] == "s 3 c r e t - \\0 - b i n a r y \\n"
    assert provisioned["transfer"] == "Path=http://updates.example.com/beta/"
    status = provisioned["status"]
    assert isinstance(status, dict)
    assert status["hostname"] == "hello-SN0042" and status["serial"] == "SN0042"


def test_noisy_line_still_delivers_the_right_bytes(provisioned: dict[str, object]) -> None:
    dropped, flipped = provisioned["noise"]  # type: ignore[misc]
    assert dropped + flipped > 0, "the proxy did not disturb anything: the test proves nothing"
    push = provisioned["noisy_push"]
    assert push.retries > 0  # type: ignore[attr-defined]
    # The line ran at the UART rate it claims: 160 KiB cannot cross it faster.
    sent, seconds = provisioned["line"]  # type: ignore[misc]
    assert sent >= 160 * 1024 and sent / seconds <= UART_RATE * 1.02, (sent, seconds)
    assert push.sha256 == provisioned["noisy_want"]  # type: ignore[attr-defined]
    assert provisioned["noisy_on_device"] == provisioned["noisy_want"]


def test_hopeless_line_fails_clearly_and_installs_nothing(
        provisioned: dict[str, object]) -> None:
    # Where a hopeless line breaks first is chance: a chunk that never arrives intact, a
    # command whose retries all fail, or a console that goes silent. Each is a PushFailed
    # that says which.
    message = str(provisioned["hopeless"])
    assert any(words in message for words in (
        "gave up after 3 failed chunks", "kept failing", "stopped answering")), message
    # Nothing under the destination's name; a partial `.appsdk-part` may stay behind when
    # the console itself stops answering (it cannot be removed through a dead line).
    assert "hopeless.bin" not in str(provisioned["hopeless_files"]).split()


def test_update_installs_from_files_and_identity_survives_it(
        provisioned: dict[str, object]) -> None:
    """The on-device half of `provision serial --update`, on the device provisioned above
    (boot 1): artifacts already on the device are installed by systemd-sysupdate from
    file://, signature checked; the device then boots the new version (boot 2) with its
    identity (hostname, serial, machine-id, ssh key, credential, update URL) as provisioned
    (test_identity_and_files_survive_a_reboot reads the rest off that boot)."""
    out = str(provisioned["install"])
    assert "Pulling 'file:///mnt/upd/SHA256SUMS'" in out
    assert "Signature verification succeeded." in out
    assert "Successfully installed update '2.0'." in out
    assert provisioned["version2"] == "2.0"
    assert provisioned["machine_id2"] == provisioned["machine_id"]
    status = provisioned["status"]
    assert isinstance(status, dict)
    assert status["serial"] == "SN0042" and status["running"] == "2.0"
