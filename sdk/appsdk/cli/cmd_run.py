"""`appsdk run`: boot an image in QEMU."""

from __future__ import annotations

import argparse
import os
import sys

from appsdk.core.errors import EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from appsdk.contract.buildinfo import locate_build
    from appsdk.core.foreign import needs_emulation
    from appsdk.emulate import swtpm
    from appsdk.emulate.qemu import (
        VmSpec,
        check_ports,
        firmware_vars,
        kvm_works,
        persistent_vars,
        prepare_disk,
        qemu_argv,
        scratch_dir,
    )
    from appsdk.image.gpt import disk_table
    from appsdk.spec.boards import DEFAULT_BOARD, EmulatedBoard, load_board

    image, record = locate_build(args.target)
    disk_table(image)  # a build.json or tarball would boot to nothing, or be written to
    board: EmulatedBoard
    if args.board:
        board = load_board(args.board)
    elif record and record.board.emulators:
        board = record.board  # as built: the profile is not read again
    elif record:  # recorded before build.json carried the emulators (schema 1)
        board = load_board(record.board.name)
    else:  # a bare image says nothing of its board
        board = load_board(DEFAULT_BOARD)
    if not args.print_only:
        check_ports(args.serial_port, args.forward)
    disk = prepare_disk(image, args.disk, args.disk_size)
    accel = args.accel
    if accel == "auto":
        # KVM only runs guests of the host's own architecture.
        accel = ("kvm" if not needs_emulation(board.debian_arch)
                 and kvm_works(board, args.emulator) else "tcg")
    spec = VmSpec(board=board, disk=disk, snapshot=not (args.in_place or args.disk),
                  serial_port=args.serial_port, forward=tuple(args.forward),
                  accel=accel, emulator=args.emulator,
                  vars_file=persistent_vars(board, args.vars, args.emulator) if args.vars
                  else firmware_vars(board, scratch_dir(), args.emulator),
                  tpm_socket=swtpm.socket_of(args.tpm.absolute()) if args.tpm else None)
    argv = qemu_argv(spec)  # before swtpm starts: an emulator without a TPM is refused first
    em = board.emulator_named(args.emulator)
    cmdline = (record.cmdline or "") if record else ""
    if em.console and cmdline and f"console={em.console}" not in cmdline:
        print(f"appsdk: note: the image's kernel console is not {em.console}, the UART of "
              f"emulator {em.name}: after the firmware's output the console stays quiet. "
              f"Add console={em.console},115200 to kernel.cmdline in "
              "appliance.yaml to see Linux there.", file=sys.stderr)
    if args.print_only:
        print(" ".join(argv))
        return EXIT_OK
    if args.tpm:
        from appsdk.core.runner import Runner

        swtpm.start_daemon(args.tpm.absolute(), Runner())  # ends when QEMU disconnects
    print(f"appsdk: booting {disk} ({accel}); quit with Ctrl-A X", file=sys.stderr)
    os.execvp(argv[0], argv)
