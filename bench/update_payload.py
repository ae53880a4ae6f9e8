#!/usr/bin/env python3
"""Update figures of a finished build: bytes a device downloads (UKI + /usr + verity, as
served) against the 318 MB of the reference NixOS example, and the on-disk slot usage.

    python3 bench/update_payload.py BUILD_DIR [--vm-logs DIR]

--vm-logs adds the `systemd-sysupdate update` time measured by tests/vm/test_x86_update.py
(figures-update.json). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REFERENCE_MB = 318  # NixOS example: update payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path)
    parser.add_argument("--vm-logs", type=Path)
    args = parser.parse_args()
    from appsdk import load_record

    record = load_record(args.build)
    art = record.artifacts
    parts = {k: art[f"update-{k}"].size for k in ("uki", "usr", "verity")}
    payload = sum(parts.values())
    print(f"update payload          {payload / 1e6:7.1f} MB = {payload / 1e6 / REFERENCE_MB:.2f}x "
          f"the {REFERENCE_MB} MB NixOS reference (goal <= 80 MB)")
    for kind, size in parts.items():
        print(f"  {kind:<8}              {size / 1e6:7.1f} MB")
    slot = record.partition_sizes
    print(f"/usr image in its slot  {art['usr'].size / 1e6:7.1f} MB of "
          f"{slot['usr'] / 1e6:.0f} MB ({art['usr'].size / slot['usr']:.0%})")
    print(f"verity tree             {art['verity'].size / 1e6:7.1f} MB of "
          f"{slot['verity'] / 1e6:.0f} MB")
    if args.vm_logs and (args.vm_logs / "figures-update.json").exists():
        figures = json.loads((args.vm_logs / "figures-update.json").read_text())
        print(f"systemd-sysupdate update in the VM (TCG): {figures['sysupdate_update_s']} s")


if __name__ == "__main__":
    main()
