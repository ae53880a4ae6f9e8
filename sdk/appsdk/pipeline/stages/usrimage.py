"""Stage usr image: the read-only /usr filesystem (erofs) of one slot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.runner import Runner
from appsdk.pipeline.tools import ToolsTree

# lz4hc: measured on a 173 MB /usr, 96 MB on disk; decompression is cheap on a Pi.
EROFS_COMPRESSION = "lz4hc"


@dataclass(frozen=True)
class UsrImage:
    path: Path
    size: int
    fs_uuid: str


def build_usr_image(tree: Path, output: Path, seed: str, tools: ToolsTree,
                    runner: Runner) -> UsrImage:
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"appsdk:usr:{seed}"))
    output.unlink(missing_ok=True)
    tools.sandbox(binds=(output.parent,), ro_binds=(tree,)).run(runner, [
        "mkfs.erofs", f"-z{EROFS_COMPRESSION}",
        # Fixed timestamps: reproducible bytes, and /usr never looks "newer" than /etc/.updated.
        "-T0", f"-U{fs_uuid}", "--quiet",
        str(output), str(tree / "usr"),
    ], env={"SOURCE_DATE_EPOCH": "0"}, timeout=1800)
    return UsrImage(path=output, size=output.stat().st_size, fs_uuid=fs_uuid)


@dataclass(frozen=True)
class Verity:
    path: Path
    roothash: str
    size: int


def build_verity(data: Path, output: Path, app_id: str, version: str, tools: ToolsTree,
                 runner: Runner) -> Verity:
    """dm-verity hash tree of the /usr image. Salt and UUID are derived from the appliance
    (and the UUID from its version) so the same image always gets the same tree and root
    hash. One salt for every version: a block of /usr that a new version leaves alone keeps
    its hash in the tree, and a delta update fetches only the tree's changed blocks (with a
    salt per version every hash differs). The salt is public either way (it is in the
    tree's superblock); it only has to differ from other appliances' trees."""
    import hashlib
    import re

    from appsdk.core.errors import BuildError

    salt = hashlib.sha256(f"appsdk:verity-salt:{app_id}".encode()).hexdigest()
    tree_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"appsdk:verity:{app_id}:{version}"))
    output.unlink(missing_ok=True)
    result = tools.sandbox(binds=(output.parent,), ro_binds=(data.parent,)).run(runner, [
        "veritysetup", "format", "--data-block-size=4096", "--hash-block-size=4096",
        "--hash=sha256", f"--salt={salt}", f"--uuid={tree_uuid}", str(data), str(output),
    ], timeout=600)
    match = re.search(r"Root hash:\s+([0-9a-f]{64})", result.stdout)
    if not match:
        raise BuildError(f"veritysetup printed no root hash:\n{result.stdout}")
    return Verity(path=output, roothash=match.group(1), size=output.stat().st_size)
