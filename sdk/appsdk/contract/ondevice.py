"""Files the image carries for the on-device contract: os-release, units, fstab, repart.d.
Pure functions (config in, {path: File} out) so the contract is unit-testable."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from appsdk.contract.layout import VAR_LABEL, Layout, device_repart, usr_label, verity_label
from appsdk.contract.updatefiles import update_names
from appsdk.spec.appliance import Appliance


@dataclass(frozen=True)
class File:
    content: str
    mode: int = 0o644


def device_script(name: str) -> str:
    """One of the on-device tools in appsdk/data/device (bash; the device has no Python)."""
    return (resources.files("appsdk") / "data" / "device" / name).read_text()


def os_release(base: str, app: Appliance) -> str:
    """Debian's os-release with the image identity added (IMAGE_ID/IMAGE_VERSION are what
    sysupdate and our tooling read to know what is running)."""
    drop = ("IMAGE_ID=", "IMAGE_VERSION=", "PRETTY_NAME=")
    lines = [line for line in base.splitlines() if line and not line.startswith(drop)]
    lines += [
        f'PRETTY_NAME="{app.name} {app.version}"',
        f"IMAGE_ID={app.id}",
        f"IMAGE_VERSION={app.version}",
    ]
    return "\n".join(lines) + "\n"


BANNER_SCRIPT = """#!/bin/sh
. /usr/lib/os-release
echo "appsdk: IMAGE_ID=$IMAGE_ID IMAGE_VERSION=$IMAGE_VERSION booted"
"""

BANNER_UNIT = """[Unit]
Description=appsdk: show image id and version on the console
After=systemd-user-sessions.service
Before=getty.target

[Service]
Type=oneshot
RemainAfterExit=yes
StandardOutput=tty
TTYPath=/dev/console
ExecStart=/usr/lib/appsdk/banner

[Install]
WantedBy=multi-user.target
"""

MACHINE_ID_UNIT = """[Unit]
Description=appsdk: keep the machine-id in /var
Documentation=man:machine-id(5)
DefaultDependencies=no
RequiresMountsFor=/var/lib
After=systemd-machine-id-commit.service
Before=sysinit.target shutdown.target
Conflicts=shutdown.target
ConditionPathExists=!/var/lib/appsdk/machine-id
# Never keep an id in a /var that is only the tmpfs root: stop the boot instead.
AssertPathIsMountPoint=/var
OnFailure=emergency.target
OnFailureJobMode=replace-irreversibly

[Service]
Type=oneshot
ExecStart=mkdir -p /var/lib/appsdk
ExecStart=cp /etc/machine-id /var/lib/appsdk/machine-id.new
ExecStart=mv /var/lib/appsdk/machine-id.new /var/lib/appsdk/machine-id

[Install]
WantedBy=sysinit.target
"""


IDENTITY_UNIT = """[Unit]
Description=appsdk: apply this device's identity from /var (hostname, keys, credentials)
DefaultDependencies=no
RequiresMountsFor=/var/lib
After=appsdk-machine-id.service
Before=sysinit.target network-pre.target systemd-networkd.service shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target
# Runs on every boot (it checks that the machine-id is the one kept in /var); without /var
# the device would come up without its identity: stop the boot instead.
AssertPathIsMountPoint=/var
OnFailure=emergency.target
OnFailureJobMode=replace-irreversibly

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/appsdk/appsdk-identity

[Install]
WantedBy=sysinit.target
"""


# On first boot (machine-id "uninitialized") PID 1 applies unit presets, and Debian's preset
# is "enable *": apt timers and even systemd-sysupdate.timer would switch on. What runs is
# decided at build time, so nothing more gets enabled on the device (first-boot presets
# only enable, so the build's own enablement stays).
PRESET = "# appsdk: unit enablement is decided when the image is built.\ndisable *\n"


VAR_MAPPED = "/dev/mapper/var"
# First boot makes /var (repart) and seals it before it can be mounted: under TCG with
# swtpm that took 40 s of TPM work, unsealing another minute (docs/tpm.md).
VAR_TPM2_TIMEOUT = "300s"


def fstab(var_encrypted: bool = False) -> str:
    # /var is created by systemd-repart on first boot, so its mount waits for repart. It is
    # required (no nofail): a boot without it goes to emergency mode.
    # The ESP is mounted at /efi for systemd-sysupdate (PathRelativeTo=boot), bless-boot and
    # appsdk-rollback-check, read-only: a power cut cannot leave its FAT half-written. Its
    # writers take it read-write for their run only (appsdk-esp, ESP_DROPINS). Pass 2: after
    # an unclean shutdown systemd-fsck@ runs fsck.vfat -a (dosfstools) before mounting it.
    var = (f"{VAR_MAPPED} /var ext4 defaults,x-systemd.device-timeout={VAR_TPM2_TIMEOUT} 0 2\n"
           if var_encrypted else
           f"PARTLABEL={VAR_LABEL} /var ext4 "
           "defaults,x-systemd.after=systemd-repart.service,x-systemd.device-timeout=60s 0 2\n")
    return (
        "# appsdk: / is a tmpfs, /usr comes from the kernel command line, /var persists.\n"
        + var +
        # nofail: boot does not wait for it, only what needs /efi does; so wait long. A
        # short timeout (30 s) expired under emulation, and a device without /efi cannot
        # bless a good update: boot counting would then roll it back.
        "PARTLABEL=esp /efi vfat ro,umask=0077,nofail,x-systemd.device-timeout=300s 0 2\n"
    )


def crypttab() -> str:
    """var.encrypt: tpm2. The initrd opens /var on every boot but the first (appsdk-factory-
    etc, for the machine-id); this line opens it on the first, once repart has made it, and
    finds it open later. headless: never a passphrase prompt, a refusal fails the boot."""
    return ("# appsdk var.encrypt: tpm2 (docs/tpm.md)\n"
            f"var /dev/disk/by-partlabel/{VAR_LABEL} - tpm2-device=auto,headless=true,"
            f"x-systemd.device-timeout={VAR_TPM2_TIMEOUT}\n")


# /var's key is sealed to PCR 7 (Secure Boot on, and its keys) and to PCR 11 as the
# appliance's PCR key signs it (any UKI the team signed: v2 after an update, v1 after a
# rollback); systemd-stub puts that public key in /run/systemd (docs/tpm.md).
VAR_TPM2_PCRS = "7"
VAR_TPM2_PUBLIC_KEY_PCRS = "11"
PCR_PUBLIC_KEY = "/run/systemd/tpm2-pcr-public-key.pem"
REPART_TPM2_DROPIN = f"""# appsdk var.encrypt: tpm2: /var is sealed to the TPM when repart makes it.
[Unit]
Wants=tpm2.target
After=tpm2.target

[Service]
ExecStart=
ExecStart=systemd-repart --dry-run=no --tpm2-device=auto --tpm2-pcrs={VAR_TPM2_PCRS} \\
    --tpm2-public-key={PCR_PUBLIC_KEY} --tpm2-public-key-pcrs={VAR_TPM2_PUBLIC_KEY_PCRS}
"""
RECOVERY_SERVICE = "appsdk-var-recovery.service"
RECOVERY_UNIT = """[Unit]
Description=appsdk: a recovery key for the encrypted /var, shown once on the console
Documentation=man:systemd-cryptenroll(1)
RequiresMountsFor=/var/lib
After=systemd-cryptsetup@var.service
ConditionPathExists=!/var/lib/appsdk/recovery-key-enrolled

[Service]
Type=oneshot
ExecStart=/usr/lib/appsdk/appsdk-var-recovery

[Install]
WantedBy=multi-user.target
"""


def var_tpm2_files() -> dict[str, File]:
    """Under /usr, for var.encrypt: tpm2."""
    return {
        "lib/systemd/system/systemd-repart.service.d/appsdk-tpm2.conf": File(REPART_TPM2_DROPIN),
        f"lib/systemd/system/{RECOVERY_SERVICE}": File(RECOVERY_UNIT),
        "lib/appsdk/appsdk-var-recovery": File(device_script("appsdk-var-recovery"), 0o755),
    }


def transfer(sections: dict[str, dict[str, str | int]]) -> str:
    out = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        out += [f"{key}={value}" for key, value in keys.items()]
        out.append("")
    return "\n".join(out)


def sysupdate_transfers(app: Appliance, layout: Layout, url: str) -> dict[str, str]:
    """/usr/lib/sysupdate.d: the verity tree and /usr into the free slot first, the UKI last,
    so a boot entry only appears once everything it needs is in place. Every transfer
    protects the running version (%A), or vacuuming right after an update could erase it."""
    names = update_names(app.id, "@v", app.update.compression)
    # sysupdate expands %-specifiers in Path=: a literal % (URL escapes) must be doubled.
    path = url.rstrip("/").replace("%", "%%") + "/"
    source: dict[str, str | int] = {"Type": "url-file", "Path": path}
    protect: dict[str, str | int] = {"ProtectVersion": "%A", "Verify": "yes"}
    return {
        "40-verity.transfer": transfer({
            "Transfer": protect,
            "Source": {**source, "MatchPattern": names["verity"]},
            "Target": {"Type": "partition", "Path": "auto",
                       "MatchPattern": verity_label("@v"),
                       "MatchPartitionType": layout.verity_type, "PartitionFlags": 0,
                       "InstancesMax": 2},
        }),
        "50-usr.transfer": transfer({
            "Transfer": protect,
            "Source": {**source, "MatchPattern": names["usr"]},
            "Target": {"Type": "partition", "Path": "auto", "MatchPattern": usr_label("@v"),
                       "MatchPartitionType": layout.usr_type, "PartitionFlags": 0,
                       "InstancesMax": 2},
        }),
        "90-uki.transfer": transfer({
            "Transfer": protect,
            "Source": {**source, "MatchPattern": names["uki"]},
            # New UKIs start with boot.tries tries (+3-0); systemd-bless-boot drops the suffix.
            "Target": {"Type": "regular-file", "Path": "/EFI/Linux", "PathRelativeTo": "boot",
                       "MatchPattern": f"{app.id}_@v+@l-@d.efi {app.id}_@v+@l.efi "
                                       f"{app.id}_@v.efi",
                       "Mode": "0444", "TriesLeft": app.boot.tries, "TriesDone": 0,
                       "InstancesMax": 2},
        }),
    }


ESP_TOOL = "/usr/lib/appsdk/appsdk-esp"
# The units that write the ESP get it read-write for their run only ('+': outside their
# sandbox, so the remount applies to the system, not to a private namespace). sysupdate's
# ExecStopPost syncs before the ESP goes back to read-only and fails the unit if it cannot.
SYSUPDATE_DROPIN = f"""# appsdk: the ESP is read-only; an update makes it writable, then syncs.
[Unit]
RequiresMountsFor=/efi

[Service]
ExecStartPre=+{ESP_TOOL} rw %n
ExecStopPost=+{ESP_TOOL} ro %n
"""
# bless-boot is RemainAfterExit=yes: ExecStopPost= would only run at shutdown, so the ESP
# goes back after a successful rename in ExecStartPost= (and in ExecStopPost= on failure).
BLESS_DROPIN = f"""# appsdk: the ESP is read-only; blessing makes it writable for the rename only.
[Unit]
RequiresMountsFor=/efi

[Service]
# Skipped (not failed) when LoaderBootCountPath is not this boot's entry: see the script.
ExecCondition=/usr/lib/appsdk/appsdk-bless-check
ExecStartPre=+{ESP_TOOL} rw %n
ExecStartPost=-+{ESP_TOOL} ro %n
ExecStopPost=-+{ESP_TOOL} ro %n
"""
# bootctl random-seed would write the ESP on every boot (and fail on a read-only one);
# systemd-boot keeps its own seed file. It runs only if the ESP happens to be writable.
RANDOM_SEED_DROPIN = """# appsdk: the ESP is read-only outside updates and blessing.
[Unit]
ConditionPathIsReadWrite=/efi
"""
ESP_DROPINS = {
    "systemd-sysupdate.service": SYSUPDATE_DROPIN,
    "systemd-bless-boot.service": BLESS_DROPIN,
    "systemd-boot-random-seed.service": RANDOM_SEED_DROPIN,
}


def esp_files() -> dict[str, File]:
    """The ESP's writers and `appsdk-update`, the durable systemd-sysupdate (issue 12)."""
    files = {
        "lib/appsdk/appsdk-lib": File(device_script("appsdk-lib")),
        "lib/appsdk/appsdk-esp": File(device_script("appsdk-esp"), 0o755),
        "bin/appsdk-update": File(device_script("appsdk-update"), 0o755),
    }
    for unit, text in ESP_DROPINS.items():
        files[f"lib/systemd/system/{unit}.d/appsdk-esp.conf"] = File(text)
    return files


def autologin_dropin() -> str:
    return (
        "# appsdk console.autologin: development images only\n"
        "[Service]\nExecStart=\n"
        "ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud "
        "115200,57600,38400,9600 - $TERM\n"
    )


def issue(app: Appliance) -> str:
    return f"{app.name} {app.version} (IMAGE_ID={app.id} IMAGE_VERSION={app.version}) \\l\n\n"


def usr_files(app: Appliance, layout: Layout, update_url: str | None = None) -> dict[str, File]:
    """Files under /usr (part of the verified, read-only image)."""
    files = {
        "lib/appsdk/banner": File(BANNER_SCRIPT, 0o755),
        "lib/systemd/system/appsdk-banner.service": File(BANNER_UNIT),
        "lib/systemd/system/appsdk-machine-id.service": File(MACHINE_ID_UNIT),
        "lib/systemd/system/appsdk-identity.service": File(IDENTITY_UNIT),
        "lib/systemd/system-preset/00-appsdk.preset": File(PRESET),
        **esp_files(),
    }
    for name, text in device_repart(layout).items():
        files[f"lib/repart.d/{name}"] = File(text)
    if layout.var_encrypted:
        files.update(var_tpm2_files())
    if update_url:
        for name, text in sysupdate_transfers(app, layout, update_url).items():
            files[f"lib/sysupdate.d/{name}"] = File(text)
    return files


def etc_files(app: Appliance) -> dict[str, File]:
    """Files under /etc (shipped as the factory copy, restored on every boot)."""
    encrypted = app.var.sealed
    files = {
        "fstab": File(fstab(encrypted)),
        "hostname": File(f"{app.id}\n"),
        "issue": File(issue(app)),
        # "uninitialized": PID 1 makes a new id on first boot; later boots restore it from /var.
        "machine-id": File("uninitialized\n", 0o444),
        # /usr is built with a fixed old mtime, so ConditionNeedsUpdate= units never rerun.
        ".updated": File("TIMESTAMP_NSEC=0\n"),
    }
    if encrypted:
        files["crypttab"] = File(crypttab())
    if app.console.autologin:
        files["systemd/system/serial-getty@.service.d/autologin.conf"] = File(autologin_dropin())
    return files


ENABLE_UNITS = ("appsdk-banner.service", "appsdk-machine-id.service", "appsdk-identity.service")
UPDATE_TIMER = "systemd-sysupdate.timer"
# Where systemd-pull looks for the keyring that SHA256SUMS.gpg must verify against.
IMPORT_PUBRING = "lib/systemd/import-pubring.gpg"
# Package-manager timers have nothing to do on an image-based system.
DISABLE_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service",
)
