"""`appsdk build`: run the pipeline stages in order and record what was made in build.json.
Artifacts are staged and moved into place only when every stage succeeded."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appsdk.contract.buildinfo import BUILD_JSON, load_build
from appsdk.contract.layout import kernel_cmdline, layout_for
from appsdk.contract.updatefiles import SUMS, update_names
from appsdk.core.digest import sha256_file
from appsdk.core.errors import BuildError, ConfigError, PathError
from appsdk.core.progress import Event, NullReporter, Reporter, stage
from appsdk.core.runner import Runner
from appsdk.core.version import __version__
from appsdk.image import bmap
from appsdk.pipeline import rpi_boot
from appsdk.pipeline.stages.customize import customize
from appsdk.pipeline.stages.disk import build_disk, disk_seed
from appsdk.pipeline.stages.esp import build_esp_tree, uki_name
from appsdk.pipeline.stages.initrd import build_initrd
from appsdk.pipeline.stages.rootfs import build_rootfs, device_tree_dir, recipe_for
from appsdk.pipeline.stages.uki import build_uki
from appsdk.pipeline.stages.update import build_update_files
from appsdk.pipeline.stages.usrimage import build_usr_image, build_verity
from appsdk.pipeline.tools import ToolsTree, ensure_tools
from appsdk.spec import fields
from appsdk.spec import firmware as firmware_pins
from appsdk.spec.appliance import Appliance, load_appliance
from appsdk.spec.boards import Board, load_board
from appsdk.trust import keys


@dataclass(frozen=True)
class Artifact:
    path: Path
    size: int
    sha256: str


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
) -> BuildResult:
    """Build an appliance. `key_dir` is the update-signing key's GnuPG home (default:
    appliance.yaml update.key, else the per-user key directory); `update_url` overrides
    appliance.yaml update.url (e.g. a lab server); `firmware` picks one of the board's
    firmware chains (default: appliance.yaml firmware, else the board's default)."""
    with contextlib.ExitStack() as claims:  # the output directory's lock, however it ends
        return _build(source, claims, board=board, version=version, output=output,
                      reporter=reporter, runner=runner, key_dir=key_dir,
                      update_url=update_url, firmware=firmware)


def _build(source: Path, claims: contextlib.ExitStack, *, board: str | None,
           version: str | None, output: Path | None, reporter: Reporter | None,
           runner: Runner | None, key_dir: Path | None, update_url: str | None,
           firmware: str | None) -> BuildResult:
    reporter = reporter or NullReporter()
    runner = runner or Runner()
    started = time.monotonic()
    app = load_appliance(source)
    # Overrides get the validators of the fields they replace; errors name the CLI flag.
    if version is not None:
        app = app.with_version(version, "--version")
    url = app.update.url if update_url is None else fields.update_url(update_url, "--update-url")
    brd = load_board(board or app.board)
    if not brd.complete:
        reporter.emit(Event("info", "board",
                            f"warning: board {brd.name} is not complete yet (see its profile)"))
    chain = brd.check_chain(firmware or app.firmware or brd.firmware_chain,
                            file=None if firmware else str(app.source))
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    output = make_output_dir(
        (output or Path(source if Path(source).is_dir() else Path(source).parent) /
         "build" / f"{brd.name}").resolve())
    claims.callback(os.close, _claim(output))
    work = output / ".work"
    if work.is_symlink() or work.is_file():
        work.unlink()  # never follow a link out of the output directory
    elif work.exists():
        shutil.rmtree(work)
    staging = work / "out"
    staging.mkdir(parents=True)
    layout = layout_for(app, brd)
    base = f"{app.id}_{app.version}"
    key_home = keys.home_for(app, key_dir)  # never inside the overlay (it would be imaged)
    # A device that updates must carry the public key; so a build with an update URL
    # without the key is an error. Without a URL, sign if a key happens to exist.
    signing = keys.load(key_home, runner) if url or key_home.is_dir() else None

    with stage(reporter, "tools", "build tools tree") as r:
        tools = ensure_tools(runner, reporter)
        r["message"] = str(tools.tree)
    with stage(reporter, "rootfs", f"Debian {app.base.suite} for {brd.debian_arch}") as r:
        rootfs = build_rootfs(recipe_for(app, brd), runner, reporter)
        r["message"] = f"({'cached' if rootfs.cached else 'built'}, kernel {rootfs.kernel_version})"
    with stage(reporter, "customize", "overlay, identity, on-device units") as r:
        custom = customize(app, layout, rootfs, work, runner, update_url=url,
                           pubring=signing.public_keyring if signing else None, board=brd)
        if custom.absent_excludes:
            r["message"] = (f"(kernel {custom.kernel_version} has no "
                            f"{', '.join(custom.absent_excludes)}: kernel.modules_exclude "
                            "entries ignored; check them for typos)")
    with stage(reporter, "initrd", "dracut") as r:
        initrd = build_initrd(brd, custom, rootfs.key, runner, reporter)
        r["message"] = "(cached)" if initrd.cached else ""
    with stage(reporter, "usr", "erofs image of /usr") as r:
        usr = build_usr_image(custom.tree, staging / f"{base}.usr", f"{app.id}:{app.version}",
                              tools, runner)
        if usr.size > layout.usr_size:
            raise ConfigError(
                f"/usr image is {usr.size} bytes, larger than the slot ({layout.usr_size})",
                file=str(app.source), field="partitions.usr", hint="raise partitions.usr")
        verity = build_verity(usr.path, staging / f"{base}.verity", f"{app.id}:{app.version}",
                              tools, runner)
        r["message"] = f"({usr.size / 1e6:.1f} MB, verity {verity.size / 1e6:.1f} MB)"
    cmdline = kernel_cmdline(app, brd, verity.roothash)
    with stage(reporter, "uki", "ukify") as r:
        uki = build_uki(brd, custom.tree, custom.kernel, custom.kernel_version, initrd.path,
                        cmdline, staging / uki_name(app.id, app.version), tools, runner)
        r["message"] = f"({uki.path.stat().st_size / 1e6:.1f} MB)"
    pinned = rpi_boot.components(brd, chain)
    with stage(reporter, "esp", "systemd-boot, loader.conf, UKI"
               + (f", {chain} firmware" if pinned else "")) as r:
        manifests = firmware_pins.load_manifests()
        # Fetched (or taken from the cache) and verified against the pins before use.
        unpacked = firmware_pins.fetch(list(pinned), runner, manifests=manifests) if pinned else {}
        additions = rpi_boot.esp_additions(
            brd, chain, unpacked, device_tree_dir(rootfs.tree, rootfs.kernel_version), manifests)
        esp = build_esp_tree(brd, custom.tree, uki.path, app.id, app.version,
                             work / "esp", epoch, additions)
        r["message"] = f"({len(esp.files)} files)"
    with stage(reporter, "disk", "GPT image by systemd-repart") as r:
        disk = build_disk(layout, esp.root, usr.path, verity.path, staging / f"{base}.img",
                          disk_seed(app.id, app.version), work, tools, runner)
        r["message"] = f"({disk.size / 1e6:.0f} MB)"
    with stage(reporter, "bmap", "block map") as r:
        block_map = bmap.create(disk.path)
        bmap.write(block_map, staging / f"{base}.img.bmap")
        r["message"] = f"({block_map.mapped_bytes / 1e6:.0f} MB mapped)"
    with stage(reporter, "update", "xz artifacts, SHA256SUMS" + (", signature" if signing
                                                                 else " (unsigned)")) as r:
        update = build_update_files({"uki": uki.path, "usr": usr.path, "verity": verity.path},
                                    app.id, app.version, staging, signing, tools, runner)
        r["message"] = f"({sum(f.stat().st_size for f in update.files) / 1e6:.1f} MB)"

    # Publish: move every artifact into place, then build.json last (it marks completion).
    (output / BUILD_JSON).unlink(missing_ok=True)
    artifacts: dict[str, Artifact] = {}
    names = {"image": f"{base}.img", "bmap": f"{base}.img.bmap",
             "uki": uki_name(app.id, app.version), "usr": f"{base}.usr",
             "verity": f"{base}.verity", "sums": SUMS,
             **{f"update-{k}": v for k, v in update_names(app.id, app.version).items()}}
    if update.signature:
        names["signature"] = update.signature.name
    for kind, name in names.items():
        final = output / name
        os.replace(staging / name, final)
        artifacts[kind] = Artifact(final, final.stat().st_size, sha256_file(final))
    result = BuildResult(output=output, app_id=app.id, version=app.version, board=brd.name,
                         artifacts=artifacts, cmdline=uki.cmdline,
                         seconds=time.monotonic() - started)
    record = build_record(result, brd, app, rootfs.kernel_version, esp.files, disk.partitions,
                          block_map, tools_versions(runner, tools))
    record["board"]["firmware_chain"] = chain
    record["firmware"] = {name: {"version": manifests[name].version,
                                 "sha256": manifests[name].sha256} for name in pinned}
    record["verity"] = {"roothash": verity.roothash}
    record["update"] = {"url": url, "signed_by": signing.fingerprint if signing else None,
                        "automatic": app.update.automatic}
    (output / BUILD_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return result


def _claim(output: Path) -> int:
    """An exclusive lock on the output directory itself (no lock file to plant a link at):
    a second build there would delete this one's .work and publish over its artifacts.
    The lock goes with the returned descriptor."""
    fd = os.open(output, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BuildError(f"{output}: another build is using this output directory",
                         file=str(output),
                         hint="wait for it to finish, or build into another --output") from None
    return fd


def make_output_dir(output: Path) -> Path:
    """Create the output directory, or refuse clearly before any stage runs."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError("is a file or inside one; the build output must be a directory",
                          file=str(output), hint="choose another output directory, or "
                          "remove the file") from None
    except OSError as exc:
        raise PathError.from_oserror(exc, "cannot create the output directory") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise PathError(f"{output}: the output directory is not writable", file=str(output),
                        hint="choose a directory you may write to")
    return output


def tools_versions(runner: Runner, tools: ToolsTree) -> dict[str, str]:
    out = tools.sandbox().run(runner, ["systemd-repart", "--version"]).stdout.splitlines()
    return {"systemd": out[0] if out else "?", "tools_tree": tools.key}


def build_record(result: BuildResult, board: Board, app: Appliance, kernel_version: str,
                 esp_files: tuple[str, ...], partitions: tuple[Any, ...], block_map: bmap.Bmap,
                 tools: dict[str, str]) -> dict[str, Any]:
    return {
        "appsdk": __version__,
        "id": result.app_id,
        "version": result.version,
        "board": {"name": board.name, "arch": board.arch,
                  "firmware_chain": board.firmware_chain, "console": board.console},
        "kernel": kernel_version,
        "cmdline": result.cmdline,
        "artifacts": {k: {"file": a.path.name, "size": a.size, "sha256": a.sha256}
                      for k, a in result.artifacts.items()},
        "esp_files": list(esp_files),
        "partitions": [asdict(p) for p in partitions],
        "bmap": {"mapped_bytes": block_map.mapped_bytes, "image_size": block_map.image_size},
        "partition_sizes": {"esp": app.partitions.esp, "usr": app.partitions.usr,
                            "verity": layout_for(app, board).verity_size,
                            "var_min": app.partitions.var_min},
        "min_device_size": layout_for(app, board).min_device_size,
        "tools": tools,
        "seconds": round(result.seconds, 1),
    }


__all__ = ["BUILD_JSON", "BuildResult", "build", "load_build"]
