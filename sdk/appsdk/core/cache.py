"""Content-addressed cache: a directory per key, created atomically (tmp + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    env = os.environ.get("APPSDK_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "appsdk"


def key_of(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (dataclasses must be converted by the caller)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_tree(root: Path) -> str:
    """Hash of a directory's names, modes, link targets and contents (for overlay keys)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def cached_dir(kind: str, key: str, make: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return (dir, was_cached). `make` fills a fresh temporary directory; it only becomes
    the cache entry if `make` returns normally, so an interrupted build never looks valid."""
    final = cache_root() / kind / key
    if (final / ".complete").exists():
        return final, True
    tmp = final.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        make(tmp)
        (tmp / ".complete").touch()
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, False
