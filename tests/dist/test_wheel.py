"""The wheel works away from the checkout: built from the repository, installed into a fresh
venv, run with its cwd elsewhere. Board profiles and firmware manifests come from the copy
inside the package; a board of a team's own (APPSDK_BOARDS_PATH) joins them and may shadow
one. No network: the build uses the host's setuptools (--no-build-isolation), the install
only the wheel (--no-deps --no-index).

The venv needs the host's pyyaml etc. but must not see the checkout, which is installed
editable there (a .pth in the host's site-packages). So it is made without
--system-site-packages and given the host's site-packages as a plain path entry: a
directory on sys.path through a .pth has its modules found but its own .pth files never
run. Each run checks appsdk.__file__ and every profile's file are inside the venv."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.dist

REPO = Path(__file__).resolve().parents[2]
SHIPPED_BOARDS = {"x86-uefi", "rpi4", "rpi5"}
SHIPPED_FIRMWARE = {p.stem for p in (REPO / "firmware").glob("*.yaml")}

# Run inside the venv: the appliances `appsdk init` made load and check as a build's
# first steps do (appliance, board, firmware chain, layout, rootfs recipe, and the
# firmware components the board names by manifest).
VALIDATE = """
import json, sys
from pathlib import Path
import appsdk
from appsdk.spec.firmware import load_manifests
from appsdk.contract.layout import layout_for
from appsdk.pipeline.rpi_boot import components
from appsdk.pipeline.stages.rootfs import recipe_for

out = {"appsdk": appsdk.__file__, "apps": {}, "path": sys.path,
       "boards": {b.name: str(b.source) for b in appsdk.list_boards()},
       "manifests": {n: str(m.source) for n, m in load_manifests().items()}}
for directory in sys.argv[1:]:
    app = appsdk.load_appliance(Path(directory))
    board = appsdk.load_board(app.board)
    chain = board.check_chain(app.firmware or board.firmware_chain)
    layout_for(app, board)
    recipe_for(app, board)
    out["apps"][directory] = {"board": board.name, "chain": chain,
                              "components": list(components(board, chain))}
print(json.dumps(out))
"""


def _copy_source(dest: Path) -> Path:
    """What the build reads, copied: a build in the checkout would leave build/ there (and
    a stale build/lib can ship files the tree no longer has)."""
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", ".mypy_cache")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("sdk", "boards", "firmware"):
        shutil.copytree(REPO / name, dest / name, ignore=junk)
    return dest


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str],
         check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    if check:
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@dataclass(frozen=True)
class Dist:
    venv: Path  # the wheel installed
    work: Path  # cwd of every run, outside the checkout
    env: dict[str, str]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    tmp = tmp_path_factory.mktemp("dist")
    home = tmp / "home"
    home.mkdir()
    # Nothing of the checkout or of the developer's own setup: no PYTHONPATH, no APPSDK_*,
    # an empty HOME (no ~/.config/appsdk/boards).
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
           and not k.startswith(("APPSDK_", "XDG_"))}
    env.update(HOME=str(home), PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    src = tmp / "src"
    src.mkdir()
    _copy_source(src)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-w", tmp / "wheels", src], tmp, env, check=False)
    if built.returncode != 0 and "invalid command 'bdist_wheel'" in built.stdout + built.stderr:
        pytest.fail("setuptools < 70.1 needs the `wheel` package to build wheels: "
                    "pip install wheel (make deps installs it with the test extras)")
    assert built.returncode == 0, built.stdout + built.stderr
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp, env)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / version / "site-packages/host-site.pth").write_text(
        "".join(f"{p}\n" for p in site.getsitepackages()))
    (wheel,) = (tmp / "wheels").glob("appsdk-*.whl")
    _run([venv / "bin/pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp / "work"
    work.mkdir()
    return Dist(venv, work, env)


def appsdk(dist: Dist, *argv: str, extra_env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**dist.env, **(extra_env or {})}
    return _run([dist.venv / "bin/appsdk", *argv], dist.work, env, check)


def validate(dist: Dist, *dirs: str, extra_env: dict[str, str] | None = None) -> Any:
    env = {**dist.env, **(extra_env or {})}
    result = _run([dist.venv / "bin/python", "-c", VALIDATE, *dirs], dist.work, env)
    return json.loads(result.stdout)


def inside(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


def test_installed_wheel_lists_boards_and_firmware(dist: Dist) -> None:
    boards = json.loads(appsdk(dist, "boards", "--json").stdout)
    assert {b["name"] for b in boards} == SHIPPED_BOARDS
    text = appsdk(dist, "boards").stdout
    assert all(name in text for name in SHIPPED_BOARDS), text
    firmware = json.loads(appsdk(dist, "firmware", "list", "--json").stdout)
    assert {m["name"] for m in firmware} == SHIPPED_FIRMWARE
    text = appsdk(dist, "firmware", "list").stdout
    assert all(name in text for name in SHIPPED_FIRMWARE), text


def test_init_and_validate_from_the_installed_wheel(dist: Dist) -> None:
    appsdk(dist, "init", "plain")
    appsdk(dist, "init", "pi", "--board", "rpi4")
    assert (dist.work / "plain/appliance.yaml").is_file()
    out = validate(dist, "plain", "pi")
    # The wheel's appsdk and its shipped data, not the checkout's editable install.
    lib = dist.venv / "lib"
    assert inside(out["appsdk"], lib), out["appsdk"]
    assert all(inside(p, lib) for p in [*out["boards"].values(), *out["manifests"].values()])
    assert not any(inside(p, REPO) for p in out["path"] if p), out["path"]
    assert out["apps"]["plain"] == {"board": "x86-uefi", "chain": "uefi", "components": []}
    # rpi4 names its firmware by manifest: all of them are found in the package.
    assert out["apps"]["pi"]["chain"] == "rpi+uboot"
    assert set(out["apps"]["pi"]["components"]) == {"raspi-firmware", "u-boot-rpi"}
    # An unknown board still names itself and what exists: `appsdk build` loads the board
    # before any work (init checks only the name's form), exit code 2 (ConfigError).
    appsdk(dist, "init", "odd", "--board", "rpi3")
    failed = appsdk(dist, "build", "odd", check=False)
    assert failed.returncode == 2, failed.stderr
    assert "unknown board 'rpi3'" in failed.stderr and "x86-uefi" in failed.stderr


def test_a_board_of_ones_own_joins_and_shadows(dist: Dist, tmp_path: Path) -> None:
    own = tmp_path / "team-boards"
    own.mkdir()
    rpi4 = (REPO / "boards/rpi4.yaml").read_text()
    (own / "teamboard.yaml").write_text(rpi4.replace("name: rpi4", "name: teamboard"))
    x86 = (REPO / "boards/x86-uefi.yaml").read_text()
    (own / "x86-uefi.yaml").write_text(
        x86.replace("description: ", "description: OUR OWN ", 1))
    env = {"APPSDK_BOARDS_PATH": str(own)}
    boards = {b["name"]: b for b in json.loads(
        appsdk(dist, "boards", "--json", extra_env=env).stdout)}
    assert set(boards) == SHIPPED_BOARDS | {"teamboard"}
    assert boards["x86-uefi"]["description"].startswith("OUR OWN")
    appsdk(dist, "init", "team", "--board", "teamboard", extra_env=env)
    out = validate(dist, "team", extra_env=env)
    assert out["boards"]["teamboard"] == str(own / "teamboard.yaml")
    assert out["boards"]["x86-uefi"] == str(own / "x86-uefi.yaml")
    assert inside(out["boards"]["rpi4"], dist.venv)
    # Its firmware components are the shipped manifests, named as rpi4 names them.
    assert set(out["apps"]["team"]["components"]) == {"raspi-firmware", "u-boot-rpi"}
