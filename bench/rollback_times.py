#!/usr/bin/env python3
"""Rollback figures from a VM test run: for each failure kind, the time from the first boot
of the bad update until the device is up on the good version again, split into tries.

    python3 -m pytest -m vm tests/vm/test_x86_rollback.py   # with APPSDK_VM_LOGS=DIR
    python3 bench/rollback_times.py DIR

Each boot is one QEMU run (TCG) from power-on until it resets or comes up. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    logs = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".ci-logs")
    # rollback.json: the test's tries (update_story.py); rollback-*.json: older runs'.
    for path in sorted([*logs.glob("rollback.json"), *logs.glob("rollback-*.json")]):
        boots = json.loads(path.read_text())
        if not boots or not isinstance(boots[0], dict):
            continue
        good = boots[-1]["version"]
        bad = [b for b in boots if b["version"] != good]
        total = sum(b["seconds"] for b in boots)
        tries = " + ".join(f"{b['seconds']:.0f}" for b in bad)
        name = path.stem.removeprefix("rollback-") if "-" in path.stem else "three ways"
        print(f"{name:<16} back on {good} after {total:6.0f} s: {len(bad)} tries of "
              f"{bad[0]['version'] if bad else '-'} ({tries} s) + good boot "
              f"{boots[-1]['seconds']:.0f} s")


if __name__ == "__main__":
    main()
