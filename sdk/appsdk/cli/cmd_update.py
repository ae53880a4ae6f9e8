"""Commands of the update chain: `keys generate`, `keys secure-boot`, `release`, `serve`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING

from appsdk.cli.common import print_json, reporter_for
from appsdk.core.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from appsdk.core.runner import Runner
    from appsdk.spec.appliance import Appliance


def cmd_keys(args: argparse.Namespace) -> int:
    from appsdk.core.runner import Runner
    from appsdk.spec.appliance import load_appliance
    from appsdk.trust import keys

    app = load_appliance(args.directory)
    if args.keys_command == "secure-boot":
        return _secure_boot_keys(app, args, Runner())
    if args.keys_command == "vars":
        return _vars(app, args, Runner())
    home = keys.home_for(app, args.keys)
    runner = Runner()
    key = keys.generate(home, f"{app.name} update signing ({app.id})", runner)
    report: dict[str, object] = {"directory": key.home, "fingerprint": key.fingerprint,
                                 "public_keyring": key.public_keyring}
    if args.secure_boot:
        from appsdk.trust import secureboot

        sb = secureboot.generate(secureboot.directory_for(app, args.keys), app.name, app.id,
                                 runner)
        report["secure_boot"] = {"directory": sb.directory, "db_cert": sb.db_cert,
                                 "db_sha256": sb.db_fingerprint()}
    if args.json:
        print_json(report)
    else:
        print(f"created update-signing key {key.fingerprint}\n  in {key.home} "
              "(keep it secret and backed up; never commit it)\n"
              f"  public key: {key.public_keyring}")
        if args.secure_boot:
            print(f"created Secure Boot key set in {sb.directory}")
    return EXIT_OK


def _secure_boot_keys(app: Appliance, args: argparse.Namespace, runner: Runner) -> int:
    from appsdk.trust import pkcs11, secureboot

    directory = secureboot.directory_for(app, args.keys, args.secure_boot_keys)
    hsm = None
    if any(isinstance(k, pkcs11.Pkcs11Key) for k in (args.db_key, args.pcr_key)):
        # The token is reached through OpenSSL's pkcs11 provider in the tools tree.
        from appsdk.pipeline.tools import ensure_tools

        hsm = ensure_tools(runner, reporter_for(args)).sandbox()
    sb = secureboot.generate(directory, app.name, app.id, runner, db_key=args.db_key,
                             db_cert=args.db_cert, pcr_key=args.pcr_key,
                             pcr_cert=args.pcr_cert, hsm=hsm)
    in_hsm = [r for r in ("db", secureboot.PCR) if sb.uri(r).exists()]
    if args.json:
        print_json({"directory": sb.directory, "db_cert": sb.db_cert,
                    "db_sha256": sb.db_fingerprint(),
                    "pcr_cert": sb.cert(secureboot.PCR),
                    "pcr_public_key_sha256": sb.pcr_fingerprint(),
                    "enrollment": [sb.auth(r) for r in secureboot.ROLES]})
    else:
        print(f"created Secure Boot key set in {sb.directory}\n"
              f"  db certificate {sb.db_cert} (sha256 {sb.db_fingerprint()[:16]}...)\n"
              f"  PCR policy key {sb.cert(secureboot.PCR)} (public key sha256 "
              f"{sb.pcr_fingerprint()[:16]}...)\n"
              "  enrollment payloads: " + ", ".join(f"{r}.auth" for r in secureboot.ROLES)
              + "".join(f"\n  {r} key: in the HSM, {sb.signer(r)} ({r}.uri)" for r in in_hsm)
              + "\n  keep PK.key and KEK.key offline once devices are enrolled; "
              "builds need only the db key, db.crt and the .auth files")
    return EXIT_OK


def _vars(app: Appliance, args: argparse.Namespace, runner: Runner) -> int:
    from appsdk.emulate.qemu import first_existing
    from appsdk.spec.boards import load_board
    from appsdk.trust import secureboot

    directory = secureboot.directory_for(app, args.keys, args.secure_boot_keys)
    keyset = secureboot.load(directory)
    template = args.template
    if template is None:
        board = load_board(args.board or app.board)
        em = board.emulator_named(args.emulator)
        if not em.firmware_vars:
            raise UsageError(f"emulator {em.name} of board {board.name} has no UEFI variable "
                             "store", flag="--emulator")
        template = first_existing(em.firmware_vars, "UEFI variable store", board)
    out = secureboot.write_vars(keyset, app.id, template, args.output, runner)
    if args.json:
        print_json({"output": out, "template": template, "keys": keyset.directory})
    else:
        print(f"wrote {out}: {template.name} with the key set of {keyset.directory} enrolled, "
              "Secure Boot on")
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
