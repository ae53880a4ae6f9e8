"""Commands of the update chain: `keys generate`, `release` and `serve`."""

from __future__ import annotations

import argparse
import contextlib
import sys

from appsdk.cli.common import print_json
from appsdk.core.errors import EXIT_OK, UsageError


def cmd_keys(args: argparse.Namespace) -> int:
    from appsdk.core.runner import Runner
    from appsdk.spec.appliance import load_appliance
    from appsdk.trust import keys

    app = load_appliance(args.directory)
    home = keys.home_for(app, args.keys)
    key = keys.generate(home, f"{app.name} update signing ({app.id})", Runner())
    if args.json:
        print_json({"directory": key.home, "fingerprint": key.fingerprint,
                    "public_keyring": key.public_keyring})
    else:
        print(f"created update-signing key {key.fingerprint}\n  in {key.home} "
              "(keep it secret and backed up; never commit it)\n"
              f"  public key: {key.public_keyring}")
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    from appsdk.contract.buildinfo import load_record
    from appsdk.core.runner import Runner
    from appsdk.trust import keys
    from appsdk.trust.keys import default_dir
    from appsdk.update.release import release

    runner = Runner()
    if not args.builds:  # argparse drops "--" tokens: `release OUT --` has no build left
        raise UsageError("release needs at least one BUILD_DIR", flag="BUILD_DIR")
    home = args.keys or default_dir(load_record(args.builds[0]).id)
    result = release(args.out, list(args.builds), keys.load(home, runner), runner)
    if args.json:
        print_json({"directory": result.directory, "versions": list(result.versions),
                    "files": list(result.files)})
    else:
        print(f"release in {result.directory}: versions {', '.join(result.versions)}")
        for name in result.files:
            print(f"  {name}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from appsdk.update.serve import make_server

    server = make_server(args.directory, args.port, args.host, verbose=True,
                         list_directories=args.list)
    port = server.server_address[1]  # the real one when --port 0 let the kernel choose
    print(f"serving {args.directory} on http://{args.host}:{port}/ (Ctrl-C stops)",
          file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return EXIT_OK
