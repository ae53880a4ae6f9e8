"""`appsdk serve` never serves outside its root: a real server on 127.0.0.1, real requests."""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appsdk.cli import shown
from appsdk.core.errors import ConfigError
from appsdk.update.serve import make_server, serve_in_thread


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A release root with a file, a subdirectory, links in and out, beside a secret."""
    secret_dir = tmp_path / "outside"
    secret_dir.mkdir()
    (secret_dir / "shadow").write_text("root:secret\n")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "SHA256SUMS").write_bytes(b"0" * 64 + b"  a.xz\n")
    (root / "sub/a.xz").write_bytes(bytes(range(256)) * 40)
    os.symlink(secret_dir / "shadow", root / "shadow")        # file outside
    os.symlink(secret_dir, root / "etc")                      # directory outside
    os.symlink("../../outside/shadow", root / "sub/rel")      # relative, outside
    os.symlink("sub/a.xz", root / "latest.xz")                # inside: fine
    os.symlink(root / "sub", root / "alias")                  # absolute, inside: fine
    return root


@pytest.fixture
def base(tree: Path) -> Iterator[str]:
    server = serve_in_thread(tree)
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def request(base: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    """Send `path` exactly as written (urllib would not normalise it, but be explicit)."""
    conn = http.client.HTTPConnection(base, timeout=5)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_normal_file_is_served_with_its_bytes(base: str, tree: Path) -> None:
    with urllib.request.urlopen(f"http://{base}/sub/a.xz", timeout=5) as response:
        assert response.status == 200
        assert response.read() == (tree / "sub/a.xz").read_bytes()
    with urllib.request.urlopen(f"http://{base}/SHA256SUMS", timeout=5) as response:
        assert response.read() == (tree / "SHA256SUMS").read_bytes()


def test_head_gives_the_length_and_no_body(base: str, tree: Path) -> None:
    head = urllib.request.Request(f"http://{base}/sub/a.xz", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == (tree / "sub/a.xz").stat().st_size
        assert response.read() == b""


def test_links_that_stay_inside_the_root_are_followed(base: str, tree: Path) -> None:
    assert request(base, "/latest.xz") == (200, (tree / "sub/a.xz").read_bytes())
    assert request(base, "/alias/a.xz") == (200, (tree / "sub/a.xz").read_bytes())


@pytest.mark.parametrize("path", [
    "/shadow",                     # symlink to a file outside
    "/etc/shadow",                 # through a symlink to a directory outside
    "/etc/",                       # the outside directory itself
    "/sub/rel",                    # relative link out
    "/../outside/shadow",          # plain ..
    "/sub/../../outside/shadow",
    "/%2e%2e/outside/shadow",      # encoded ..
    "/%2E%2E%2Foutside%2Fshadow",  # encoded .. and /
    "/sub/a.xz%00",                # NUL
    "/sub%00/a.xz",
    "/missing",
])
def test_nothing_outside_the_root_is_served(base: str, path: str) -> None:
    status, body = request(base, path)
    assert status == 404, path
    assert b"secret" not in body


def test_directories_are_not_listed_unless_asked(base: str, tree: Path) -> None:
    assert request(base, "/")[0] == 404
    assert request(base, "/sub/")[0] == 404
    server = serve_in_thread(tree, list_directories=True)
    try:
        status, body = request(f"127.0.0.1:{server.server_address[1]}", "/sub/")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and b"a.xz" in body


def test_a_directory_redirect_stays_on_this_host(base: str) -> None:
    conn = http.client.HTTPConnection(base, timeout=5)
    try:
        conn.request("GET", "/sub")
        response = conn.getresponse()
        assert response.status == 301 and response.headers["Location"] == "/sub/"
    finally:
        conn.close()


def test_index_html_is_served_without_listing(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("hello")
    server = serve_in_thread(tmp_path)
    try:
        assert request(f"127.0.0.1:{server.server_address[1]}", "/") == (200, b"hello")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_only_get_and_head(base: str, method: str) -> None:
    assert request(base, "/sub/a.xz", method)[0] == 501


def test_a_fifo_inside_the_root_is_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    server = serve_in_thread(tmp_path)
    try:
        assert request(f"127.0.0.1:{server.server_address[1]}", "/pipe")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} is already in use") as info:
            make_server(tmp_path, port)
    assert info.value.hint and "another port" in info.value.hint
    assert shown(info.value)[0].startswith(f"--port: port {port} is already in use")


@pytest.mark.parametrize("host", ["no such host!", "256.1.1.1", "a\0b", ""])
def test_a_bad_host_is_a_config_error(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="host: ") as info:
        make_server(tmp_path, 0, host).server_close()
    assert shown(info.value)[0].startswith("--host: ")


@pytest.mark.parametrize("port", [-1, 65536, 10**20])
def test_a_bad_port_is_a_config_error(tmp_path: Path, port: int) -> None:
    with pytest.raises(ConfigError, match="port: ") as info:
        make_server(tmp_path, port)
    assert shown(info.value)[0].startswith("--port: ")


def test_a_root_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path / "missing"):
        with pytest.raises(ConfigError, match="not a directory") as info:
            make_server(path, 0)
        assert str(path) in str(info.value) and info.value.hint


def test_urllib_sees_404_for_a_link_out(base: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{base}/shadow", timeout=5)
    assert info.value.code == 404


PIECES = ["..", ".", "%2e%2e", "%2E.", "%2f", "%00", "%", "%zz", "%ff", "etc", "shadow",
          "sub", "rel", "alias", "a.xz", "outside", "", "?", "#", "\\", "~", ";x"]


def test_any_path_gets_a_clean_answer_and_never_the_secret(tree: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server = serve_in_thread(tree)
    base = f"127.0.0.1:{server.server_address[1]}"

    @settings(max_examples=80, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.sampled_from(PIECES), max_size=6))
    def check(pieces: list[str]) -> None:
        status, body = request(base, "/" + "/".join(pieces))
        assert status in (200, 301, 404)
        assert b"secret" not in body

    try:
        check()
    finally:
        server.shutdown()
        server.server_close()
