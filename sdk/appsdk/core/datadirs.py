"""Where appsdk's data files are: board profiles (boards/) and firmware manifests
(firmware/). Each kind is looked up along a path; the first file of a name wins:

1. the directories named in the kind's environment variable (colon separated, e.g.
   APPSDK_BOARDS_PATH: a team's own profiles, which may shadow a shipped one),
2. for boards, $XDG_CONFIG_HOME/appsdk/boards (default ~/.config/appsdk/boards),
3. the checkout's top-level boards/ or firmware/ when appsdk runs from a source tree (an
   editable install: edits show at once),
4. the copy shipped inside the package (appsdk/data/boards, appsdk/data/firmware), which
   pyproject.toml maps from the same top-level directories."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent.parent  # the appsdk/ directory


@dataclass(frozen=True)
class Kind:
    name: str  # the top-level directory: "boards", "firmware"
    envs: tuple[str, ...]  # variables holding colon-separated directories, first first
    user: bool  # also looked up in ~/.config/appsdk/<name>


BOARDS = Kind("boards", ("APPSDK_BOARDS_PATH", "APPSDK_BOARDS_DIR"), user=True)
FIRMWARE = Kind("firmware", ("APPSDK_FIRMWARE_PATH",), user=False)


def checkout_root() -> Path | None:
    """The source tree appsdk runs from (sdk/appsdk beside pyproject.toml), if any."""
    root = PACKAGE.parent.parent
    if PACKAGE.parent.name == "sdk" and (root / "pyproject.toml").is_file():
        return root
    return None


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "appsdk"


def _dir_problem(path: Path) -> str | None:
    """Why `path` cannot be searched, or None (stat errors such as ENAMETOOLONG and EACCES
    escape Path.is_dir)."""
    try:
        return None if path.is_dir() else "is not a directory"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"


def _env_dirs(kind: Kind) -> list[Path]:
    out = []
    for env in kind.envs:
        for entry in os.environ.get(env, "").split(":"):
            if not entry:
                continue  # "a::b" and a trailing ":" name nothing
            problem = _dir_problem(Path(entry))
            if problem:
                # A typo would silently hide a team's profiles behind the shipped ones.
                shown = entry if len(entry) <= 200 else entry[:200] + "..."
                raise ConfigError(f"{shown} {problem}", field=env,
                                  hint=f"create it, or remove it from {env}")
            out.append(Path(entry))
    return out


def user_dir(kind: Kind) -> Path | None:
    """~/.config/appsdk/<kind>, or None without a home (no HOME, no passwd entry)."""
    try:
        return config_home() / kind.name
    except RuntimeError:
        return None


def base_dir(kind: Kind) -> Path:
    """The checkout's directory of this kind, else the copy shipped in the package."""
    root = checkout_root()
    candidates = ([root / kind.name] if root else []) + [PACKAGE / "data" / kind.name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no {kind.name}/ directory found (looked in "
                      f"{', '.join(map(str, candidates))})",
                      hint="this appsdk installation is incomplete: reinstall the package")


def search_path(kind: Kind) -> list[Path]:
    """Existing directories of this kind, in lookup order."""
    dirs = _env_dirs(kind)
    user = user_dir(kind) if kind.user else None
    if user and not _dir_problem(user):  # it need not exist
        dirs.append(user)
    dirs.append(base_dir(kind))
    return dirs


def yaml_files(dirs: Iterable[Path]) -> dict[str, Path]:
    """Name (file stem) -> the first NAME.yaml in `dirs`, sorted by name."""
    found: dict[str, Path] = {}
    for directory in dirs:
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))
