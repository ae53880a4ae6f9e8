"""The disk layout both sides agree on: partition labels, sizes, types, kernel command line.
Build-time repart (disk stage) and first-boot repart.d (customize stage) derive from here."""

from __future__ import annotations

from dataclasses import dataclass

from appsdk.core.units import MiB
from appsdk.spec.appliance import Appliance
from appsdk.spec.boards import Board


@dataclass(frozen=True)
class Layout:
    arch: str
    esp_size: int
    usr_size: int
    var_min: int
    version: str
    var_encrypted: bool = False  # var.encrypt: tpm2 (LUKS2 sealed to the TPM, docs/tpm.md)

    @property
    def usr_type(self) -> str:
        return f"usr-{self.arch}"

    @property
    def verity_type(self) -> str:
        return f"usr-{self.arch}-verity"

    @property
    def verity_size(self) -> int:
        # sha256 tree of 4 KiB blocks: 1/128 of the data plus upper levels; 1/64 leaves room.
        return max(16 * MiB, -(-self.usr_size // 64 // MiB) * MiB)

    @property
    def min_device_size(self) -> int:
        """The smallest disk first boot can complete on: GPT + ESP + both slots + /var.
        Smaller disks boot into emergency mode (repart cannot add slot B and /var)."""
        return 2 * MiB + self.esp_size + 2 * (self.usr_size + self.verity_size) + self.var_min

    @property
    def usr_label(self) -> str:
        return usr_label(self.version)

    @property
    def verity_label(self) -> str:
        return verity_label(self.version)


def usr_label(version: str) -> str:
    return f"usr_{version}"


def verity_label(version: str) -> str:
    # GPT names hold 36 characters: "verity_" + a version of up to 28 fits.
    return f"verity_{version}"


# FAT32 needs at least 65525 clusters (fewer and every reader takes it for FAT16). 3% on top
# covers the reserved sectors and the two FATs that come out of the partition first.
FAT32_MIN_CLUSTERS = 65525
ESP_SECTOR = 512


def esp_cluster_sectors(esp_size: int) -> int:
    """Sectors per cluster for the ESP: the largest cluster of 4, 2 or 1 KiB that leaves
    FAT32 enough clusters, else one sector. mkfs.fat's own default below 260 MB is one 512-byte
    sector, and vfat mounted `sync` (as updates write the ESP) allocates and writes the FAT
    cluster by cluster: a 28 MB UKI took 50 s under TCG with 512-byte clusters, 14.5 s with
    2 KiB and 8 s with 4 KiB (FIELD-NOTES)."""
    for sectors in (8, 4, 2):
        if esp_size // (ESP_SECTOR * sectors) >= FAT32_MIN_CLUSTERS * 103 // 100:
            return sectors
    return 1


def esp_mkfs_options(esp_size: int) -> str:
    """Extra mkfs.vfat options for systemd-repart ($SYSTEMD_REPART_MKFS_OPTIONS_VFAT)."""
    return f"-s {esp_cluster_sectors(esp_size)}"


EMPTY_LABEL = "_empty"  # systemd-sysupdate's marker for a free slot
VAR_LABEL = "var"


def layout_for(app: Appliance, board: Board) -> Layout:
    return Layout(
        arch=board.arch,
        esp_size=app.partitions.esp,
        usr_size=app.partitions.usr,
        var_min=app.partitions.var_min,
        version=app.version,
        var_encrypted=app.var.sealed,
    )


def partition(**keys: object) -> str:
    lines = ["[Partition]"]
    for key, value in keys.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def device_repart(layout: Layout) -> dict[str, str]:
    """repart.d for the device: on first boot add the empty B slot and /var (grown to the
    disk). Slot sizes are pinned so repart never grows A and A/B always match."""
    pinned = {"SizeMinBytes": layout.usr_size, "SizeMaxBytes": layout.usr_size}
    pinned_verity = {"SizeMinBytes": layout.verity_size, "SizeMaxBytes": layout.verity_size}
    return {
        "10-esp.conf": partition(Type="esp", SizeMinBytes=layout.esp_size,
                                 SizeMaxBytes=layout.esp_size),
        "20-usr-a.conf": partition(Type=layout.usr_type, **pinned),
        "21-usr-b.conf": partition(Type=layout.usr_type, Label=EMPTY_LABEL, **pinned),
        "30-verity-a.conf": partition(Type=layout.verity_type, **pinned_verity),
        "31-verity-b.conf": partition(Type=layout.verity_type, Label=EMPTY_LABEL,
                                      **pinned_verity),
        # Encrypt=tpm2: the TPM key slot only, sealed as systemd-repart.service's drop-in
        # says (ondevice.REPART_TPM2_DROPIN); no key material in the image.
        "50-var.conf": partition(Type="var", Label=VAR_LABEL, Format="ext4",
                                 Encrypt="tpm2" if layout.var_encrypted else None,
                                 SizeMinBytes=layout.var_min, FactoryReset=True),
    }


def image_repart(layout: Layout, esp_dir: str, usr_image: str,
                 verity_image: str) -> dict[str, str]:
    """repart.d for the flashed image: ESP and slot A only (the rest is made on the device)."""
    return {
        "10-esp.conf": partition(Type="esp", Format="vfat", CopyFiles=f"{esp_dir}:/",
                                 SizeMinBytes=layout.esp_size, SizeMaxBytes=layout.esp_size),
        "20-usr-a.conf": partition(Type=layout.usr_type, Label=layout.usr_label,
                                   CopyBlocks=usr_image, SizeMinBytes=layout.usr_size,
                                   SizeMaxBytes=layout.usr_size),
        "30-verity-a.conf": partition(Type=layout.verity_type, Label=layout.verity_label,
                                      CopyBlocks=verity_image, SizeMinBytes=layout.verity_size,
                                      SizeMaxBytes=layout.verity_size),
    }


def kernel_cmdline(app: Appliance, board: Board, roothash: str) -> tuple[str, ...]:
    """The UKI's command line. usrhash= pins the /usr image: this UKI boots only the exact
    /usr it was built with, and dm-verity refuses any block that differs."""
    return (
        "root=tmpfs",
        "rootflags=mode=0755",
        f"usrhash={roothash}",
        f"systemd.verity_usr_data=/dev/disk/by-partlabel/{usr_label(app.version)}",
        f"systemd.verity_usr_hash=/dev/disk/by-partlabel/{verity_label(app.version)}",
        "mount.usr=/dev/mapper/usr",
        "mount.usrfstype=erofs",
        "mount.usrflags=ro",
        f"console={board.console}",
        # The image is configured at build time; never stop at an interactive first-boot wizard.
        "systemd.firstboot=off",
        # Under Secure Boot the command line is signed, but systemd would still import
        # credentials from unsigned places: *.cred files on the ESP (systemd-stub), SMBIOS
        # and fw_cfg. Devices get theirs from /var (appsdk-identity), so none is needed.
        *(("systemd.import_credentials=no",) if app.secure_boot else ()),
        *app.cmdline,
    )
