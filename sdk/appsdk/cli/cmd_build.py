"""Commands that make and read images: `build` and `inspect`."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from appsdk.cli.common import print_json, reporter_for
from appsdk.core.errors import EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from appsdk.pipeline.builder import build

    reporter = reporter_for(args)
    result = build(args.directory, board=args.board, version=args.app_version,
                   firmware=args.firmware,
                   output=args.output, reporter=reporter, key_dir=args.keys,
                   secure_boot_keys=args.secure_boot_keys,
                   update_url=args.update_url)
    if args.json:
        print_json({"output": result.output, "id": result.app_id, "version": result.version,
                    "board": result.board, "seconds": round(result.seconds, 1),
                    "artifacts": {k: asdict(a) for k, a in result.artifacts.items()}})
    else:
        print(f"built {result.app_id} {result.version} for {result.board} "
              f"in {result.seconds:.0f}s:")
        for artifact in result.artifacts.values():
            print(f"  {artifact.path}  {artifact.size / 1e6:.1f} MB")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from appsdk.image.inspect import inspect

    info = inspect(args.target)
    if args.json:
        print_json(info)
        return EXIT_OK
    chain = f", firmware {info['firmware_chain']}" if info.get("firmware_chain") else ""
    print(f"image:     {info['id']} {info['version']}  (board {info['board']}{chain})")
    print(f"disk:      {info['image_size']} bytes, GPT {info['disk_guid']}")
    for p in info["partitions"]:
        print(f"  {p['label']:<14} {p['type']:<22} offset {p['offset']:>12}  "
              f"size {p['size']:>12}")
    print("ESP files:")
    for f in info["esp_files"]:
        print(f"  {f['path']:<40} {f['size']:>10}  {f['sha256'][:16]}...")
    print(f"cmdline:   {info['cmdline']}")
    print(f"systemd-boot: {info['systemd_boot'] or '-'}")
    sb = info["secure_boot"] or {}
    for path, by in (sb.get("signed") or {}).items():
        print(f"signed:    {path}: {'; '.join(by) if by else 'not signed'}")
    if sb.get("enroll_keys"):
        print(f"enrolls:   Secure Boot key set(s) {', '.join(sb['enroll_keys'])} (loader/keys)")
    for name, fw in info["firmware"].items():
        print(f"firmware:  {name} {fw['version']} (sha256 {fw['sha256'][:16]}...)")
    return EXIT_OK
