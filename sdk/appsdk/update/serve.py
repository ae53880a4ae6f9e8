"""`appsdk serve`: a plain HTTP server for an update directory, for labs and tests.
Production uses any static web server or CDN: sysupdate needs nothing but GET.

It often runs as root, so it serves only regular files whose real path is inside the real
path of its root: a symlink out of the root, `..` (plain or percent-encoded) and NUL bytes
get 404; symlinks that stay inside are fine. Directories are listed only when asked.
Only GET and HEAD exist (anything else gets 501 from http.server)."""

from __future__ import annotations

import errno
import functools
import http.server
import os
import socket
import stat
import threading
import urllib.parse
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO

from appsdk.core.errors import ConfigError, Option


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], handler: Any, family: socket.AddressFamily,
                 root: str, list_directories: bool, verbose: bool) -> None:
        self.address_family = family  # read by TCPServer.__init__ to make the socket
        self.root = root  # real path of the served directory
        self.list_directories = list_directories
        self.verbose = verbose
        super().__init__(address, handler)


def _inside(root: str, real: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _parts(self) -> list[str] | None:
        """The request path's components, or None for anything that is not a plain path."""
        raw = urllib.parse.urlsplit(self.path).path
        # surrogateescape: undecodable bytes map to the same names os.fsencode gives back.
        path = urllib.parse.unquote(raw, errors="surrogateescape")
        if "\0" in path:
            return None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        return None if ".." in parts else parts

    def _real(self, parts: list[str]) -> str | None:
        real = os.path.realpath(os.path.join(self.server.root, *parts))
        return real if _inside(self.server.root, real) else None

    def _not_found(self) -> None:
        self.send_error(HTTPStatus.NOT_FOUND, "File not found")

    def send_head(self) -> BinaryIO | None:
        parts = self._parts()
        real = self._real(parts) if parts is not None else None
        if parts is None or real is None:
            self._not_found()
            return None
        if os.path.isdir(real):
            return self._directory(parts, real)
        return self._open_file(real)

    def _directory(self, parts: list[str], real: str) -> BinaryIO | None:
        if not urllib.parse.urlsplit(self.path).path.endswith("/"):
            # Built from the checked parts, so the Location can never point off this host.
            location = "/" + "".join(urllib.parse.quote(p, errors="surrogateescape") + "/"
                                     for p in parts)
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        for name in ("index.html", "index.htm"):
            index = self._real([*parts, name])
            if index is not None and os.path.isfile(index):
                return self._open_file(index)
        if not self.server.list_directories:
            self._not_found()
            return None
        return self.list_directory(real)

    def _open_file(self, real: str) -> BinaryIO | None:
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._not_found()
            return None
        f = os.fdopen(fd, "rb")
        st = os.fstat(fd)
        # Check what was opened, not what was resolved: a link swapped in between is caught.
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = real
        if not stat.S_ISREG(st.st_mode) or not _inside(self.server.root, opened):
            f.close()
            self._not_found()
            return None
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-type", self.guess_type(real))
        self.send_header("Content-Length", str(st.st_size))
        self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
        self.end_headers()
        return f


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError, ValueError) as exc:
        raise ConfigError(f"cannot use host {host!r}: {exc}", field=Option("host"),
                          hint="give an address of this machine, e.g. 127.0.0.1, 0.0.0.0 "
                          "or ::") from None
    return infos[0][0]


def _bind_error(exc: OSError, host: str, port: int) -> ConfigError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} is already in use on {host}", field=Option("port"),
                           hint="stop the program using it, or choose another port")
    if exc.errno == errno.EACCES:
        return ConfigError(f"not allowed to listen on {where}", field=Option("port"),
                           hint="ports below 1024 need root; choose a port above 1024")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{host} is not an address of this machine", field=Option("host"),
                           hint="give a local address, e.g. 127.0.0.1 or 0.0.0.0")
    return ConfigError(f"cannot listen on {where}: {exc.strerror or exc}", field=Option("host"),
                       hint="check the host and the port")


def make_server(directory: Path, port: int = 8000, host: str = "127.0.0.1",
                verbose: bool = False, list_directories: bool = False) -> _Server:
    if not directory.is_dir():
        raise ConfigError("not a directory", file=str(directory),
                          hint="give the release directory (made by `appsdk release OUT`)")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{port!r} is not a TCP port", field=Option("port"),
                          hint="give a number from 1 to 65535 (0: any free port)")
    root = os.path.realpath(directory)
    family = _family(host, port)
    try:
        return _Server((host, port), functools.partial(_Handler, directory=root), family,
                       root, list_directories, verbose)
    except OSError as exc:
        raise _bind_error(exc, host, port) from None


def serve_in_thread(directory: Path, port: int = 0, host: str = "127.0.0.1",
                    list_directories: bool = False) -> _Server:
    """Start serving in a daemon thread (tests, release tooling); call .shutdown() to stop."""
    server = make_server(directory, port, host, list_directories=list_directories)
    # A short poll keeps .shutdown() quick (it waits for the loop to look again).
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server
