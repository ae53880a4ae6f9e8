"""`appsdk doctor` names every host tool the pipeline and the tests use, each with the
Debian package that provides it, and `make deps` installs every one of those packages (a
fresh machine once failed the rpi4 tests on a package only recommended by mmdebstrap)."""

from __future__ import annotations

import re
from pathlib import Path

from appsdk.doctor import HOST_TOOLS

REPO = Path(__file__).resolve().parents[2]
ESSENTIAL = {"coreutils", "dpkg", "bash"}  # Essential: yes on every Debian system
# Commands the tests run that come with Essential packages.
ESSENTIAL_COMMANDS = {"bash", "cp", "dd", "false", "sha256sum", "shred", "true", "truncate",
                      "umount"}


def make_deps_packages() -> set[str]:
    text = (REPO / "Makefile").read_text()
    match = re.search(r"^APT_PACKAGES\s*=\s*((?:.*\\\n)*.*)$", text, re.M)
    assert match, "Makefile has no APT_PACKAGES"
    return set(match.group(1).replace("\\\n", " ").split())


def test_every_doctor_package_is_installed_by_make_deps() -> None:
    packages = make_deps_packages()
    missing = sorted({t.package for t in HOST_TOOLS} - packages - ESSENTIAL)
    assert not missing, f"doctor names packages `make deps` does not install: {missing}"


def test_every_command_the_tests_run_is_known_to_doctor() -> None:
    named = {t.name for t in HOST_TOOLS} | ESSENTIAL_COMMANDS
    used: set[str] = set()
    for file in (REPO / "tests").rglob("*.py"):
        used |= set(re.findall(r'run\(\s*\["([a-z][a-z0-9_.-]*)"', file.read_text()))
    unknown = sorted(used - named)
    assert not unknown, f"tests run commands doctor does not name: {unknown}"
