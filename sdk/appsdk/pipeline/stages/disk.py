"""Stage disk: the GPT image (ESP + slot A) by systemd-repart in offline mode."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from appsdk.contract.layout import Layout, esp_mkfs_options, image_repart
from appsdk.contract.record import PartitionInfo
from appsdk.core.runner import Runner
from appsdk.pipeline.tools import ToolsTree


@dataclass(frozen=True)
class DiskImage:
    path: Path
    size: int
    partitions: tuple[PartitionInfo, ...]


def disk_seed(app_id: str, version: str) -> str:
    """Fixed per id+version: same inputs give the same partition and disk UUIDs."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"appsdk:disk:{app_id}:{version}"))


def build_disk(layout: Layout, esp_root: Path, usr_image: Path, verity_image: Path,
               output: Path, seed: str, work: Path, tools: ToolsTree,
               runner: Runner) -> DiskImage:
    definitions = work / "repart.d"
    if definitions.exists():
        shutil.rmtree(definitions)
    definitions.mkdir(parents=True)
    for name, text in image_repart(layout, str(esp_root), str(usr_image),
                                   str(verity_image)).items():
        (definitions / name).write_text(text)
    output.unlink(missing_ok=True)
    result = tools.sandbox(binds=(output.parent,),
                           ro_binds=(definitions, esp_root, usr_image.parent,
                                     verity_image.parent)).run(runner, [
        "systemd-repart", "--empty=create", "--size=auto", "--offline=yes", "--dry-run=no",
        # repart picks 4096-byte sectors for image files; firmware and mtools expect 512.
        "--sector-size=512", f"--seed={seed}", f"--definitions={definitions}",
        "--json=short", str(output),
    ], env={"SOURCE_DATE_EPOCH": "0",
            "SYSTEMD_REPART_MKFS_OPTIONS_VFAT": esp_mkfs_options(layout.esp_size)},
        timeout=1800)
    return DiskImage(path=output, size=output.stat().st_size,
                     partitions=parse_repart_json(result.stdout))


def parse_repart_json(text: str) -> tuple[PartitionInfo, ...]:
    rows = json.loads(text) if text.strip() else []
    return tuple(
        PartitionInfo(label=row.get("label", ""), type=row.get("type", ""),
                      uuid=row.get("uuid", ""), offset=int(row.get("offset", 0)),
                      size=int(row.get("raw_size", 0)))
        for row in rows
    )
