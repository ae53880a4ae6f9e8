"""Linters are tests: ruff over everything, mypy (strict) over sdk/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True,
                          text=True, check=False)


def test_ruff() -> None:
    result = run("ruff", "check", "sdk", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run("mypy", "--no-error-summary")
    assert result.returncode == 0, result.stdout + result.stderr
