"""Boot-time benches' shared part: one QEMU boot with its serial console in a file, timed
to the moments the console shows (kernel, the image's banner, the health check), and the
table and means they print."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

MARKS = {"kernel": "Linux version", "banner": r"appsdk: IMAGE_ID=\S+ IMAGE_VERSION=\S+ booted",
         "healthy": r"Finished .*appsdk health check"}


def watch(argv: list[str], log: Path, until: str, timeout: float,
          extra: dict[str, str] | None = None, linger: float = 0.0) -> dict[str, float]:
    """Run QEMU's `argv` (-no-reboot, -serial stdio) with the console going to `log` (a new
    file) until mark `until` (of MARKS or `extra`), the machine exits or `timeout`; then, after
    `linger` seconds, the power goes. Returns seconds from the start to each mark seen."""
    log.unlink(missing_ok=True)
    argv = list(argv)
    argv[argv.index("stdio")] = f"file:{log}"
    patterns = {**MARKS, **(extra or {})}
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen: dict[str, float] = {}
    try:
        while time.monotonic() - started < timeout and proc.poll() is None:
            text = log.read_text(errors="replace") if log.exists() else ""
            for name, pattern in patterns.items():
                if name not in seen and re.search(pattern, text):
                    seen[name] = time.monotonic() - started
            if until in seen:
                time.sleep(linger)
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return seen


def print_table(rows: dict[str, list[dict[str, float]]], width: int) -> None:
    print(f"{'':<{width}}" + "".join(f"{m:>10}" for m in MARKS) + "   (s from QEMU start, TCG)")
    for label, runs in rows.items():
        for marks in runs:
            print(f"{label:<{width}}" + "".join(f"{marks.get(m, float('nan')):>10.1f}"
                                                for m in MARKS))


def mean_healthy(runs: list[dict[str, float]]) -> float:
    """Mean seconds to the health check over the runs that reached it (nan: none did)."""
    times = [r["healthy"] for r in runs if "healthy" in r]
    return sum(times) / len(times) if times else float("nan")
