"""`appsdk build`: run the pipeline stages in order and record what was made in build.json.
Artifacts are staged and moved into place only when every stage succeeded."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from appsdk.contract.buildinfo import BUILD_JSON, load_build, write_record
from appsdk.contract.esprecord import FirmwarePin
from appsdk.contract.layout import kernel_cmdline, layout_for
from appsdk.contract.record import (
    ArtifactRecord,
    BuildRecord,
    RecordedBoard,
    SecureBootRecord,
    UpdateRecord,
)
from appsdk.contract.updatefiles import SUMS, update_names
from appsdk.core.errors import ConfigError
from appsdk.core.progress import NullReporter, Reporter, stage
from appsdk.core.runner import Runner
from appsdk.core.version import __version__
from appsdk.image import bmap
from appsdk.pipeline import rpi_boot
from appsdk.pipeline.inputs import (
    check_var_encryption,
    resolve_inputs,
    secure_boot_keys,
    signing_key,
)
from appsdk.pipeline.publish import (
    Artifact,
    claim_output,
    fresh_work_dir,
    make_output_dir,
    publish,
)
from appsdk.pipeline.stages.customize import customize
from appsdk.pipeline.stages.disk import build_disk, disk_seed
from appsdk.pipeline.stages.esp import EspSecureBoot, build_esp_tree, uki_name
from appsdk.pipeline.stages.initrd import build_initrd
from appsdk.pipeline.stages.rootfs import build_rootfs, device_tree_dir, recipe_for
from appsdk.pipeline.stages.sign import sign_efi
from appsdk.pipeline.stages.uki import build_uki
from appsdk.pipeline.stages.update import build_update_files
from appsdk.pipeline.stages.usrimage import build_usr_image, build_verity
from appsdk.pipeline.tools import ToolsTree, ensure_tools
from appsdk.spec import firmware as firmware_pins


@dataclass(frozen=True)
class BuildResult:
    output: Path
    app_id: str
    version: str
    board: str
    artifacts: dict[str, Artifact]
    cmdline: str
    seconds: float

    @property
    def image(self) -> Path:
        return self.artifacts["image"].path


def build(
    source: Path,
    *,
    board: str | None = None,
    version: str | None = None,
    output: Path | None = None,
    reporter: Reporter | None = None,
    runner: Runner | None = None,
    key_dir: Path | None = None,
    update_url: str | None = None,
    firmware: str | None = None,
    secure_boot_keys: Path | None = None,
) -> BuildResult:
    """Build an appliance. `key_dir` is the update-signing key's GnuPG home (default:
    appliance.yaml update.key, else the per-user key directory); `update_url` overrides
    appliance.yaml update.url (e.g. a lab server); `firmware` picks one of the board's
    firmware chains (default: appliance.yaml firmware, else the board's default);
    `secure_boot_keys`: the Secure Boot key set when appliance.yaml enables secure_boot
    (default: secure_boot.keys, else `secure-boot/` in the update key's directory)."""
    with contextlib.ExitStack() as claims:  # the output directory's lock, however it ends
        return _build(source, claims, board=board, version=version, output=output,
                      reporter=reporter, runner=runner, key_dir=key_dir,
                      update_url=update_url, firmware=firmware,
                      sb_keys=secure_boot_keys)


def _build(source: Path, claims: contextlib.ExitStack, *, board: str | None,
           version: str | None, output: Path | None, reporter: Reporter | None,
           runner: Runner | None, key_dir: Path | None, update_url: str | None,
           firmware: str | None, sb_keys: Path | None) -> BuildResult:
    reporter = reporter or NullReporter()
    runner = runner or Runner()
    started = time.monotonic()
    given = resolve_inputs(source, board=board, version=version, output=output,
                           update_url=update_url, firmware=firmware, reporter=reporter)
    app, brd, chain, url, epoch, base = (given.app, given.board, given.chain, given.url,
                                         given.epoch, given.base)
    output = make_output_dir(given.output)
    claims.callback(os.close, claim_output(output))
    work = fresh_work_dir(output)
    staging = work / "out"
    layout = layout_for(app, brd)
    signing = signing_key(app, key_dir, url, runner)
    sb = secure_boot_keys(app, key_dir, sb_keys)
    db_sha256 = sb.db_fingerprint() if sb else ""
    check_var_encryption(app, sb)

    with stage(reporter, "tools", "build tools tree") as r:
        tools = ensure_tools(runner, reporter)
        r["message"] = str(tools.tree)
    with stage(reporter, "rootfs", f"Debian {app.base.suite} for {brd.debian_arch}") as r:
        rootfs = build_rootfs(recipe_for(app, brd), runner, reporter)
        r["message"] = f"({'cached' if rootfs.cached else 'built'}, kernel {rootfs.kernel_version})"
    with stage(reporter, "customize", "overlay, identity, on-device units") as r:
        custom = customize(app, layout, rootfs, work, runner, tools, update_url=url,
                           pubring=signing.public_keyring if signing else None, board=brd)
        if custom.absent_excludes:
            r["message"] = (f"(kernel {custom.kernel_version} has no "
                            f"{', '.join(custom.absent_excludes)}: kernel.modules_exclude "
                            "entries ignored; check them for typos)")
    with stage(reporter, "initrd", "dracut") as r:
        initrd = build_initrd(brd, custom, rootfs.key, runner, reporter,
                              var_encrypted=layout.var_encrypted)
        r["message"] = "(cached)" if initrd.cached else ""
    with stage(reporter, "usr", "erofs image of /usr") as r:
        usr = build_usr_image(custom.tree, staging / f"{base}.usr", f"{app.id}:{app.version}",
                              tools, runner)
        if usr.size > layout.usr_size:
            raise ConfigError(
                f"/usr image is {usr.size} bytes, larger than the slot ({layout.usr_size})",
                file=str(app.source), field="partitions.usr", hint="raise partitions.usr")
        verity = build_verity(usr.path, staging / f"{base}.verity", app.id, app.version,
                              tools, runner)
        r["message"] = f"({usr.size / 1e6:.1f} MB, verity {verity.size / 1e6:.1f} MB)"
    cmdline = kernel_cmdline(app, brd, verity.roothash)
    with stage(reporter, "uki", "ukify") as r:
        uki = build_uki(brd, custom.tree, custom.kernel, custom.kernel_version, initrd.path,
                        cmdline, staging / uki_name(app.id, app.version), tools, runner,
                        pcr_keys=sb if sb is not None and sb.has_pcr_key() else None)
        r["message"] = f"({uki.path.stat().st_size / 1e6:.1f} MB" + (
            f", PCR 11 policy signed for {uki.pcr_phases} boot phases)" if uki.pcr_phases
            else ")")
    esp_sb = None
    if sb is not None and app.secure_boot is not None:
        with stage(reporter, "sign", "Secure Boot signatures on systemd-boot and the UKI") as r:
            signed = work / "signed"
            signed.mkdir()
            os.replace(sign_efi(uki.path, signed / uki.path.name, sb, epoch, tools, runner),
                       uki.path)
            sdboot = custom.tree / f"usr/lib/systemd/boot/efi/systemd-boot{brd.efi_arch}.efi"
            esp_sb = EspSecureBoot(
                boot_loader=sign_efi(sdboot, signed / sdboot.name, sb, epoch, tools, runner),
                enrollment={role: sb.auth(role) for role in ("PK", "KEK", "db")},
                enroll=app.secure_boot.enroll)
            r["message"] = f"(db {db_sha256[:16]}, verified with sbverify)"
    pinned = rpi_boot.components(brd, chain)
    with stage(reporter, "esp", "systemd-boot, loader.conf, UKI"
               + (f", {chain} firmware" if pinned else "")) as r:
        manifests = firmware_pins.load_manifests()
        # Fetched (or taken from the cache) and verified against the pins before use.
        unpacked = firmware_pins.fetch(list(pinned), runner, manifests=manifests) if pinned else {}
        additions = rpi_boot.esp_additions(
            brd, chain, unpacked, device_tree_dir(rootfs.tree, rootfs.kernel_version), manifests)
        esp = build_esp_tree(brd, custom.tree, uki.path, app.id, app.version,
                             work / "esp", epoch, additions, esp_sb)
        r["message"] = f"({len(esp.files)} files)"
    with stage(reporter, "disk", "GPT image by systemd-repart") as r:
        disk = build_disk(layout, esp.root, usr.path, verity.path, staging / f"{base}.img",
                          disk_seed(app.id, app.version), work, tools, runner)
        r["message"] = f"({disk.size / 1e6:.0f} MB)"
    with stage(reporter, "bmap", "block map") as r:
        block_map = bmap.create(disk.path)
        bmap.write(block_map, staging / f"{base}.img.bmap")
        r["message"] = f"({block_map.mapped_bytes / 1e6:.0f} MB mapped)"
    compression = app.update.compression
    with stage(reporter, "update", f"{compression} artifacts, SHA256SUMS"
               + (", signature" if signing else " (unsigned)")) as r:
        update = build_update_files({"uki": uki.path, "usr": usr.path, "verity": verity.path},
                                    app.id, app.version, compression, staging, signing, tools,
                                    runner)
        r["message"] = f"({sum(f.stat().st_size for f in update.files) / 1e6:.1f} MB)"

    # Everything the record needs from tools, before anything is published: a failure
    # from here on would leave the previous build gone and the new one unrecorded.
    versions = tools_versions(runner, tools)
    names = {"image": f"{base}.img", "bmap": f"{base}.img.bmap",
             "uki": uki_name(app.id, app.version), "usr": f"{base}.usr",
             "verity": f"{base}.verity", "sums": SUMS,
             **{f"update-{k}": v for k, v in update_names(app.id, app.version,
                                                                 compression).items()}}
    if update.signature:
        names["signature"] = update.signature.name
    artifacts = publish(staging, output, names)
    result = BuildResult(output=output, app_id=app.id, version=app.version, board=brd.name,
                         artifacts=artifacts, cmdline=uki.cmdline,
                         seconds=time.monotonic() - started)
    write_record(BuildRecord(
        id=app.id, version=app.version, board=RecordedBoard.of(brd, chain),
        artifacts={k: ArtifactRecord(a.path.name, a.size, a.sha256)
                   for k, a in artifacts.items()},
        appsdk=__version__, kernel=rootfs.kernel_version, cmdline=uki.cmdline,
        esp_files=esp.files, partitions=disk.partitions,
        mapped_bytes=block_map.mapped_bytes, image_size=block_map.image_size,
        partition_sizes={"esp": app.partitions.esp, "usr": app.partitions.usr,
                         "verity": layout.verity_size, "var_min": app.partitions.var_min},
        min_device_size=layout.min_device_size, tools=versions,
        seconds=round(result.seconds, 1),
        firmware={name: FirmwarePin(name, manifests[name].version, manifests[name].sha256)
                  for name in pinned},
        verity_roothash=verity.roothash,
        update=UpdateRecord(url, signing.fingerprint if signing else None,
                            app.update.automatic, compression),
        secure_boot=SecureBootRecord(db_sha256, app.secure_boot.enroll,
                                     sb.pcr_fingerprint() if uki.pcr_phases else None)
        if sb is not None and app.secure_boot is not None else None), output)
    shutil.rmtree(work, ignore_errors=True)
    return result


def tools_versions(runner: Runner, tools: ToolsTree) -> dict[str, str]:
    out = tools.sandbox().run(runner, ["systemd-repart", "--version"]).stdout.splitlines()
    return {"systemd": out[0] if out else "?", "tools_tree": tools.key}


__all__ = ["BUILD_JSON", "Artifact", "BuildResult", "build", "load_build", "make_output_dir"]
