"""Pinned firmware: one manifest per component in firmware/ (source, exact version,
sha256; shipped in the package too, plus directories on APPSDK_FIRMWARE_PATH), fetched
into a cache and verified before anything is taken from it.

A source is a Debian package (`debian:`, a path in the archive's pool; the mirror defaults
to deb.debian.org and can be overridden with APPSDK_FIRMWARE_MIRROR or `mirror=`) or a zip
archive by URL (`url:`, e.g. a GitHub release). An offline directory (APPSDK_FIRMWARE_DIR
or `offline=`) holding the same files by name is used instead of the network. A file whose
sha256 differs from the manifest is never used."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.cache import cache_root
from appsdk.core.datadirs import FIRMWARE, search_path, yaml_files
from appsdk.core.digest import sha256_file
from appsdk.core.errors import AppsdkError, ConfigError, FirmwareMismatch
from appsdk.core.runner import Runner
from appsdk.spec.reader import Reader
from appsdk.spec.yamlsrc import load

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SHA256 = r"[0-9a-f]{64}"


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    pool_path: str | None  # relative to a Debian mirror (a .deb), or
    url: str | None  # a zip archive's address
    sha256: str
    license: str
    files: tuple[tuple[str, str], ...]  # (name in our tree, path inside the package)
    elf: tuple[str, ...]  # names that must be sane ELF files
    source: Path

    @property
    def filename(self) -> str:
        return (self.pool_path or self.url or "").rsplit("/", 1)[-1]

    def origin(self, mirror: str | None) -> str:
        if self.url:
            return self.url
        base = mirror or os.environ.get("APPSDK_FIRMWARE_MIRROR") or DEFAULT_MIRROR
        return f"{base.rstrip('/')}/{self.pool_path}"


def manifest_files(directory: Path | None = None) -> dict[str, Path]:
    """Component -> manifest: those in `directory` alone, else the first of each name on
    APPSDK_FIRMWARE_PATH, then the checkout's firmware/ or the copy in the package."""
    return yaml_files([directory] if directory else search_path(FIRMWARE))


def load_manifest(path: Path) -> Manifest:
    src = load(path)
    top = Reader(src, (), src.data, {"name", "version", "debian", "url", "sha256", "license",
                                     "files", "elf"})
    name = top.text("name", pattern=r"[a-z0-9][a-z0-9.+-]*", what="a package name")
    if name != path.stem:
        raise src.error(("name",), f"must match the file name ({path.stem!r})")
    if top.has("debian") == top.has("url"):
        raise src.error((), "needs exactly one source: debian: (a pool path) or url: (a zip)")
    pool = (top.text("debian", pattern=r"pool/[\w/.+~-]+\.deb", what="a pool/... .deb path")
            if top.has("debian") else None)
    url = (top.text("url", pattern=r"https?://\S+\.zip", what="an http(s) URL of a .zip")
           if top.has("url") else None)
    files = top.sub("files", None)
    if not files.data:
        raise src.error(("files",), "must name at least one file to take from the package")
    pairs = tuple((str(k), files.text(k)) for k in sorted(files.data))
    elf = top.texts("elf")
    for index, item in enumerate(elf):
        if item not in dict(pairs):
            raise src.error(("elf", index), f"{item!r} is not one of the files")
    return Manifest(name=name, version=top.text("version"), pool_path=pool, url=url,
                    sha256=top.text("sha256", pattern=SHA256, what="a lowercase sha256"),
                    license=top.text("license", ""), files=pairs, elf=elf, source=path)


def load_manifests(directory: Path | None = None) -> dict[str, Manifest]:
    return {name: load_manifest(p) for name, p in manifest_files(directory).items()}


def _download(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as exc:
        raise AppsdkError(f"cannot download {url}: {exc}",
                          hint="set APPSDK_FIRMWARE_MIRROR to a reachable Debian mirror, or "
                          "APPSDK_FIRMWARE_DIR to a directory holding the .deb files") from None


def fetch_package(m: Manifest, mirror: str | None = None, offline: Path | None = None) -> Path:
    """The verified .deb of a manifest, from the cache, the offline dir or the mirror."""
    cached = cache_root() / "firmware" / m.sha256 / m.filename
    if cached.is_file() and sha256_file(cached) == m.sha256:
        return cached
    offline = offline or (Path(os.environ["APPSDK_FIRMWARE_DIR"])
                          if os.environ.get("APPSDK_FIRMWARE_DIR") else None)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        if offline is not None:
            origin = str(offline / m.filename)
            if not (offline / m.filename).is_file():
                raise AppsdkError(f"{m.filename} is not in the offline directory {offline}",
                                  hint=f"copy it there from {m.origin(None)}")
            shutil.copyfile(offline / m.filename, partial)
        else:
            origin = m.origin(mirror)
            _download(origin, partial)
        got = sha256_file(partial)
        if got != m.sha256:
            raise FirmwareMismatch(
                f"firmware {m.name} {m.version}: {origin} has sha256 {got}, the manifest "
                f"{m.source} pins {m.sha256}; refusing to use it",
                hint="a mirror serving another build, a truncated download or a tampered "
                "file. If the package was really rebuilt, review it and update the manifest "
                "(version and sha256) in one reviewed change.")
        partial.rename(cached)
    finally:
        partial.unlink(missing_ok=True)
    return cached


def check_elf(path: Path) -> str:
    """Refuse a file that claims to be ELF firmware but is not a complete ELF image
    (truncated download, an HTML error page, a wrong file). Returns a one-line summary."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            size = path.stat().st_size
            segments = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            if not segments:
                raise FirmwareMismatch(f"{path.name}: ELF file without loadable segments")
            for s in segments:
                if s["p_offset"] + s["p_filesz"] > size:
                    raise FirmwareMismatch(f"{path.name}: a segment ends past the end of the "
                                           "file (truncated?)")
            return (f"{path.name}: ELF{elf.elfclass} machine {elf['e_machine']}, "
                    f"{len(segments)} loadable segments, entry {elf['e_entry']:#x}")
    except ELFError as exc:
        raise FirmwareMismatch(f"{path.name}: not a valid ELF file ({exc})") from None


def _unpack(archive: Path, into: Path, runner: Runner) -> None:
    if archive.suffix == ".deb":
        runner.run(["dpkg-deb", "-x", archive, into])
        return
    with zipfile.ZipFile(archive) as z:
        for member in z.infolist():
            # Only plain relative names: a verified archive still must not write elsewhere.
            if member.filename.startswith("/") or ".." in Path(member.filename).parts:
                raise FirmwareMismatch(f"{archive.name}: unsafe member {member.filename!r}")
        z.extractall(into)


def extract(m: Manifest, deb: Path, target: Path, runner: Runner) -> dict[str, Path]:
    """Take the manifest's files out of the verified package or archive into `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        _unpack(deb, Path(tmp), runner)
        out = {}
        for name, inside in m.files:
            src = Path(tmp) / inside.lstrip("/")
            if not src.is_file():
                raise FirmwareMismatch(f"firmware {m.name} {m.version}: {inside} is not in "
                                       f"{deb.name}", hint=f"fix files: in {m.source}")
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            out[name] = dest
    for name in m.elf:
        check_elf(out[name])
    return out


def fetch(names: list[str] | None = None, runner: Runner | None = None,
          mirror: str | None = None, offline: Path | None = None,
          manifests: dict[str, Manifest] | None = None) -> dict[str, Path]:
    """Fetch, verify and unpack components into the cache; returns {component: dir}."""
    runner = runner or Runner()
    manifests = manifests or load_manifests()
    wanted = names or sorted(manifests)
    out = {}
    for name in wanted:
        if name not in manifests:
            raise ConfigError(f"no firmware manifest {name!r}",
                              hint="known: " + ", ".join(sorted(manifests)))
        m = manifests[name]
        unpacked = cache_root() / "firmware" / m.sha256 / "files"
        # A manifest that gained a file since the cache was unpacked: unpack again.
        if not (unpacked / ".complete").exists() or any(
                not (unpacked / file).is_file() for file, _ in m.files):
            deb = fetch_package(m, mirror, offline)
            shutil.rmtree(unpacked, ignore_errors=True)
            extract(m, deb, unpacked, runner)
            (unpacked / ".complete").touch()
        out[name] = unpacked
    return out
