"""appsdk-factory-etc, the initrd's /etc and machine-id, run for real against a fake
/sysroot and sysfs (APPSDK_SYSROOT, APPSDK_SYS) with mount stubs, under dash and bash."""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

import pytest


def write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


DRACUT = Path(str(resources.files("appsdk") / "data" / "dracut" / "90appsdk-etc"))
MACHINE_ID = "0123456789abcdef0123456789abcdef"
INITRD_STUBS = {
    # mount -o ro DEV DIR: "mounts" $FAKE/var-DEVNAME, if there is one.
    "mount": 'src="$FAKE/var-${3##*/}"; [ -d "$src" ] || exit 32; cp -a "$src/." "$4/"',
    "umount": 'rm -rf "${1:?}"/*',
}


class Initrd:
    """A fake initrd: /sysroot with /usr, a sysfs with one disk (vda: ESP, usr_1.0, and
    optionally var), and the mount stubs."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sysroot = tmp / "sysroot"
        self.factory = self.sysroot / "usr/share/factory/etc"
        (self.factory / "systemd/system").mkdir(parents=True)
        (self.factory / "passwd").write_text("root:x:0:0::/root:/bin/bash\n")
        (self.factory / "machine-id").write_text("uninitialized\n")
        (self.factory / "systemd/system/x.service").write_text("[Unit]\n")
        (self.sysroot / "usr/lib").mkdir(parents=True, exist_ok=True)
        (self.sysroot / "usr/lib/os-release").write_text("IMAGE_ID=hello\nIMAGE_VERSION=1.0\n")
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.dev = tmp / "dev"
        (self.dev / "mapper").mkdir(parents=True)
        for name, body in INITRD_STUBS.items():
            write_exe(self.bin / name, f"#!/bin/bash\n{body}\n")
        self.partition("vda", "vda1", "esp")
        self.partition("vda", "vda2", "usr_1.0")

    def partition(self, disk: str, name: str, label: str) -> None:
        part = self.tmp / "sys/devices/pci0/virtio1/block" / disk / name
        part.mkdir(parents=True)
        (part / "uevent").write_text(f"MAJOR=254\nDEVNAME={name}\nDEVTYPE=partition\n"
                                     f"PARTN={name[-1]}\nPARTNAME={label}\n")
        links = self.tmp / "sys/class/block"
        links.mkdir(parents=True, exist_ok=True)
        (links / name).symlink_to(part)

    def var(self, name: str = "vda3", machine_id: str | None = MACHINE_ID) -> None:
        self.partition("vda", name, "var")
        content = self.tmp / f"var-{name}/lib/appsdk"
        content.mkdir(parents=True)
        if machine_id is not None:
            (content / "machine-id").write_text(machine_id + "\n")

    def run(self, shell: str = "sh") -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "FAKE": str(self.tmp),
               "APPSDK_SYSROOT": str(self.sysroot), "APPSDK_SYS": str(self.tmp / "sys"),
               "APPSDK_DEV": str(self.dev), "APPSDK_VARMNT": str(self.tmp / "varmnt"),
               "APPSDK_CRYPTSETUP": str(self.bin / "systemd-cryptsetup")}
        return subprocess.run([shell, str(DRACUT / "appsdk-factory-etc.sh")], env=env,
                              capture_output=True, text=True, timeout=30, check=False)

    def encrypted_var(self, unseals: bool) -> None:
        """/var as var.encrypt: tpm2 makes it: LUKS2 on vda3, its content behind
        /dev/mapper/var once the (fake) systemd-cryptsetup has the TPM unseal it."""
        self.partition("vda", "vda3", "var")
        (self.dev / "vda3").write_bytes(b"LUKS\xba\xbe\x00\x02" + bytes(4088))
        content = self.tmp / "var-var/lib/appsdk"
        content.mkdir(parents=True)
        (content / "machine-id").write_text(MACHINE_ID + "\n")
        opened = f'touch "{self.dev}/mapper/var"' if unseals else "exit 1"
        write_exe(self.bin / "systemd-cryptsetup",
                  f'#!/bin/bash\necho "$@" >> "{self.tmp}/cryptsetup.log"\n{opened}\n')

    def cryptsetup_calls(self) -> list[str]:
        log = self.tmp / "cryptsetup.log"
        return log.read_text().splitlines() if log.exists() else []

    def etc(self, rel: str) -> str:
        return (self.sysroot / "etc" / rel).read_text()


@pytest.fixture(params=["sh", "bash"])
def initrd(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Initrd, str]:
    return Initrd(tmp_path), str(request.param)


def test_factory_etc_first_boot(initrd: tuple[Initrd, str]) -> None:
    fake, shell = initrd
    result = fake.run(shell)
    assert result.returncode == 0, result.stderr
    assert fake.etc("passwd").startswith("root:") and fake.etc("machine-id") == "uninitialized\n"
    assert fake.etc("systemd/system/x.service") == "[Unit]\n"
    assert sorted(p.name for p in fake.sysroot.iterdir()) == ["etc", "usr"]


def test_factory_etc_restores_the_machine_id(initrd: tuple[Initrd, str]) -> None:
    fake, shell = initrd
    fake.var()
    result = fake.run(shell)
    assert result.returncode == 0, result.stderr
    assert fake.etc("machine-id") == MACHINE_ID + "\n"


def test_factory_etc_new_var_keeps_uninitialized(initrd: tuple[Initrd, str]) -> None:
    fake, shell = initrd
    fake.var(machine_id=None)  # repart made /var, power went before the id was saved
    assert fake.run(shell).returncode == 0
    assert fake.etc("machine-id") == "uninitialized\n"


@pytest.mark.parametrize("case", ["unmountable", "bad id", "two vars", "copy fails"])
def test_factory_etc_failure_stops_the_boot(initrd: tuple[Initrd, str], case: str) -> None:
    fake, shell = initrd
    if case == "unmountable":
        fake.partition("vda", "vda3", "var")  # a var partition that does not mount
    elif case == "bad id":
        fake.var(machine_id="not-hex")
    elif case == "two vars":
        fake.var("vda3")
        fake.var("vda4")
    else:
        fake.var()
        # cp copies part of /etc, then fails (a read error, a full tmpfs)
        write_exe(fake.bin / "cp", '#!/bin/bash\nmkdir -p "$3"; '
                         '/bin/cp "$2/passwd" "$3/"; exit 1\n')
    result = fake.run(shell)
    assert result.returncode == 1
    assert "stopping the boot" in result.stderr
    # PID 1 never sees a partial /etc: there is none.
    assert not (fake.sysroot / "etc").exists()


def test_factory_etc_unit_stops_the_boot_on_failure() -> None:
    unit = (DRACUT / "appsdk-factory-etc.service").read_text()
    assert "OnFailure=emergency.target" in unit
    assert "StandardError=journal+console" in unit
    setup = (DRACUT / "module-setup.sh").read_text()
    assert "initrd-fs.target.requires/appsdk-factory-etc.service" in setup
    assert "initrd-fs.target.wants" not in setup


def test_factory_etc_opens_an_encrypted_var_with_the_tpm(initrd: tuple[Initrd, str]) -> None:
    fake, shell = initrd
    fake.encrypted_var(unseals=True)
    result = fake.run(shell)
    assert result.returncode == 0, result.stderr
    assert fake.etc("machine-id") == MACHINE_ID + "\n"
    # Opened once, by the TPM alone (no prompt), and left open for PID 1's cryptsetup@var.
    assert fake.cryptsetup_calls() == [
        f"attach var {fake.dev}/vda3 - tpm2-device=auto,headless=true"]
    assert (fake.dev / "mapper/var").exists()


def test_factory_etc_finds_var_already_open(initrd: tuple[Initrd, str]) -> None:
    fake, shell = initrd
    fake.encrypted_var(unseals=False)
    (fake.dev / "mapper/var").touch()
    result = fake.run(shell)
    assert result.returncode == 0, result.stderr
    assert fake.cryptsetup_calls() == []
    assert fake.etc("machine-id") == MACHINE_ID + "\n"


def test_factory_etc_tpm_refusal_stops_the_boot_and_says_why(initrd: tuple[Initrd, str]
                                                            ) -> None:
    fake, shell = initrd
    fake.encrypted_var(unseals=False)
    before = (fake.dev / "vda3").read_bytes()
    result = fake.run(shell)
    assert result.returncode == 1
    assert "/var is locked" in result.stderr and "recovery key" in result.stderr
    assert "stopping the boot" in result.stderr
    assert not (fake.sysroot / "etc").exists()
    assert (fake.dev / "vda3").read_bytes() == before  # never reformatted


def test_var_tpm2_dracut_module_is_only_added_on_request() -> None:
    module = DRACUT.parent / "90appsdk-var-tpm2"
    setup = (module / "module-setup.sh").read_text()
    # 255: dracut includes a module that checks 0 in every generic initrd.
    assert "return 255" in setup and "return 0" not in setup.split("depends()")[0]
    for lib in ("libtss2-esys", "libtss2-sys", "libtss2-tcti-device",
                "cryptsetup/libcryptsetup-token-systemd-tpm2.so"):
        assert lib in setup
    dropin = (module / "tpm2.conf").read_text()
    assert "After=tpm2.target systemd-pcrphase-initrd.service" in dropin
