"""`appsdk serve`: a plain HTTP server for an update directory, for labs and tests.
Production uses any static web server or CDN: sysupdate needs nothing but GET."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

from .errors import ConfigError


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


def make_server(directory: Path, port: int = 8000, host: str = "127.0.0.1",
                verbose: bool = False) -> http.server.ThreadingHTTPServer:
    if not directory.is_dir():
        raise ConfigError("not a directory", file=str(directory))
    handler = functools.partial(_Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.verbose = verbose  # type: ignore[attr-defined]
    return server


def serve_in_thread(directory: Path, port: int = 0,
                    host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """Start serving in a daemon thread (tests, release tooling); call .shutdown() to stop."""
    server = make_server(directory, port, host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
