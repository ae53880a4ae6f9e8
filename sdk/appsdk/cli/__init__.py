"""The `appsdk` command: argument parsing, rendering and exit codes, nothing else.
Every command is a call into the library. This module runs one: it parses the command line
(parser.py), calls the command (cmd_*.py) and turns whatever it raises into a message and
the exit code of its error class."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from appsdk.cli.argtypes import baud as _baud
from appsdk.cli.argtypes import count as _count
from appsdk.cli.argtypes import existing as _existing
from appsdk.cli.argtypes import forward as _forward
from appsdk.cli.argtypes import new_dir as _new_dir
from appsdk.cli.argtypes import new_file as _new_file
from appsdk.cli.argtypes import port as _port
from appsdk.cli.argtypes import seconds as _seconds
from appsdk.cli.argtypes import size as _size
from appsdk.cli.cmd_build import cmd_build, cmd_inspect
from appsdk.cli.cmd_device import cmd_devices, cmd_flash, cmd_verify
from appsdk.cli.cmd_provision import cmd_provision
from appsdk.cli.cmd_run import cmd_run
from appsdk.cli.cmd_setup import cmd_boards, cmd_doctor, cmd_firmware, cmd_init
from appsdk.cli.cmd_update import cmd_keys, cmd_release, cmd_serve
from appsdk.cli.parser import build_parser
from appsdk.core.errors import (
    AppsdkError,
    InternalError,
    Interrupted,
    Option,
    OutputClosed,
    PathError,
    UsageError,
)

# The argument types under the names tests (and older callers) use: cli._port, ...
__all__ = ["COMMANDS", "_baud", "_count", "_existing", "_forward", "_new_dir", "_new_file",
           "_port", "_seconds", "_size", "main", "shown"]

# Looked up here at each call (tests swap entries in).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "firmware": cmd_firmware,
    "inspect": cmd_inspect,
    "devices": cmd_devices,
    "flash": cmd_flash,
    "verify": cmd_verify,
    "provision": cmd_provision,
    "init": cmd_init,
    "boards": cmd_boards,
    "doctor": cmd_doctor,
    "build": cmd_build,
    "run": cmd_run,
    "keys": cmd_keys,
    "release": cmd_release,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that a bad command line is reported as JSON too.
    as_json = "--json" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc.usage, end="", file=sys.stderr)
        return _fail(exc, as_json)
    flags = _flags(parser)
    as_json = bool(getattr(args, "json", False))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return int(COMMANDS[args.command](args))
    except AppsdkError as exc:
        return _fail(exc, as_json, flags)
    except KeyboardInterrupt:
        return _fail(Interrupted("interrupted"), as_json)
    except BrokenPipeError:
        return _output_closed()
    except OSError as exc:
        # A path the user gave that cannot be read or written, caught nowhere closer.
        if exc.filename is None:
            return _fail(_internal(exc), as_json)
        return _fail(PathError.from_oserror(exc), as_json)
    except Exception as exc:  # the last-resort net: a bug, reported as one
        return _fail(_internal(exc), as_json)


def _output_closed() -> int:
    """The reader of stdout went away (`appsdk devices --json | head -1`): stop quietly, and
    point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return OutputClosed.exit_code


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Argument name -> the flag that sets it (port -> --port), over every subcommand."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags.update(_flags(sub))
        elif action.option_strings:
            flags[action.dest] = max(action.option_strings, key=len)
    return flags


def _as_flag(exc: AppsdkError, flags: dict[str, str]) -> tuple[str, dict[str, object]]:
    """The error's text and JSON object, with an API argument it names (Option) shown as
    the flag the user typed."""
    text, data = str(exc), exc.as_dict()
    name = exc.field
    if isinstance(name, Option) and name in flags:
        flag = flags[name]
        if text.startswith(f"{name}: "):
            text = f"{flag}: {text[len(name) + 2:]}"
        elif f": {name}: " in text:  # after a file name
            text = text.replace(f": {name}: ", f": {flag}: ", 1)
        else:
            text = f"{flag}: {text}"
        data.update(field=flag, message=text)
    if exc.hint and exc.remedy in flags:
        data["hint"] = f"{exc.hint} ({flags[exc.remedy]})"
    return text, data


def shown(exc: AppsdkError) -> tuple[str, str | None]:
    """The error's message and hint as the command line prints them (arguments as flags)."""
    text, data = _as_flag(exc, _flags(build_parser()))
    hint = data["hint"]
    return text, hint if isinstance(hint, str) else None


def _fail(exc: AppsdkError, as_json: bool, flags: dict[str, str] | None = None) -> int:
    """Report an error: text on stderr always; under --json also one object on stdout."""
    kind = "internal error" if isinstance(exc, InternalError) else "error"
    text, data = _as_flag(exc, flags or {})
    print(f"appsdk: {kind}: {text}", file=sys.stderr)
    if data["hint"]:
        print(f"appsdk: hint: {data['hint']}", file=sys.stderr)
    if as_json:
        print(json.dumps(data, sort_keys=True, default=str), flush=True)
    return exc.exit_code


def _internal(exc: BaseException) -> InternalError:
    return InternalError(f"{type(exc).__name__}: {exc}", _save_traceback(exc))


def _save_traceback(exc: BaseException) -> str | None:
    """Write the traceback to a file (the cache, else $TMPDIR) and return its path."""
    import tempfile
    import traceback

    from appsdk.core.cache import cache_root

    text = "".join(traceback.format_exception(exc))
    for directory in (cache_root() / "tracebacks", Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="appsdk-traceback-", suffix=".txt",
                                        dir=directory)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            return name
        except OSError:
            continue
    return None
