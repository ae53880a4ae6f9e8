"""What every command renders with: the progress reporter its --json asks for, and the
JSON form of a result."""

from __future__ import annotations

import argparse
import json
from typing import Any

from appsdk.core.progress import JsonReporter, Reporter, TextReporter


def reporter_for(args: argparse.Namespace) -> Reporter:
    return JsonReporter() if args.json else TextReporter()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
