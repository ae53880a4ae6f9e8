"""Boot confirmation files, and the on-device health-check script run for real on the host."""

from __future__ import annotations

import http.server
import subprocess
import threading
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.contract.confirm import (
    confirmation_files,
    confirmation_units,
    health_unit,
    systemd_quote,
    watchdog_seconds,
)
from appsdk.core.errors import ConfigError
from appsdk.spec.appliance import HealthCheck, load_appliance
from appsdk.spec.boards import load_board

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(resources.files("appsdk") / "data" / "device" / "appsdk-health-check")


def test_health_unit_gates_boot_complete() -> None:
    unit = health_unit(HealthCheck(name="web", url="http://127.0.0.1:8080/health", timeout=20))
    assert "Before=boot-complete.target" in unit
    assert "RequiredBy=boot-complete.target" in unit
    assert "OnFailure=appsdk-boot-failed.service" in unit
    assert "TimeoutStartSec=50" in unit
    assert ('ExecStart=/usr/lib/appsdk/appsdk-health-check url '
            '"http://127.0.0.1:8080/health" 20') in unit


def test_quoting_survives_systemd_specifiers() -> None:
    assert systemd_quote('test "$HOME" 100%') == '"test \\"$$HOME\\" 100%%"'


def systemd_unquote(word: str) -> str:
    """What systemd makes of one double-quoted ExecStart= argument, in its order: unquote
    and C-unescape (extract_first_word), then specifiers (%%), then variables ($$). Anything
    it would expand or reject fails here."""
    assert word[0] == word[-1] == '"' and len(word) >= 2
    out, i, body = [], 0, word[1:-1]
    escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}
    while i < len(body):
        char = body[i]
        assert char != '"', "an unescaped quote ends the word early"
        if char == "\\":
            nxt = body[i + 1]
            if nxt == "x":
                value = int(body[i + 2:i + 4], 16)
                assert value != 0
                out.append(chr(value))
                i += 4
                continue
            out.append(escapes[nxt])
            i += 2
            continue
        out.append(char)
        i += 1
    text = "".join(out)
    for marker in ("%", "$"):
        parts = text.split(marker * 2)
        assert all(marker not in part for part in parts), f"{marker} would be expanded"
        text = marker.join(parts)
    return text


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               max_size=40)
       | st.text("%$\"\\' \t;&|x", max_size=20))
def test_quoting_arrives_exactly_as_written(command: str) -> None:
    assert systemd_unquote(systemd_quote(command)) == command


def test_nul_in_a_command_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        systemd_quote("a\0b")


def test_health_command_reaches_bash_as_written() -> None:
    command = 'test "$HOME" != \'%h\' && echo 100% \\ $((1+1))'
    unit = health_unit(HealthCheck(name="c", command=command, timeout=5))
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    quoted = line.removeprefix("ExecStart=/usr/lib/appsdk/appsdk-health-check command ")
    assert systemd_unquote(quoted.removesuffix(" 5")) == command


def test_files_for_hello() -> None:
    app = load_appliance(REPO / "examples/hello")
    files = confirmation_files(app, load_board("x86-uefi"))
    assert "lib/systemd/system/appsdk-health-hello-http.service" in files
    deadline = files["lib/systemd/system/boot-complete.target.d/appsdk-deadline.conf"].content
    assert "JobTimeoutSec=300" in deadline and "JobTimeoutAction=reboot-force" in deadline
    watchdog = files["lib/systemd/system.conf.d/appsdk-watchdog.conf"].content
    assert "RuntimeWatchdogSec=30s" in watchdog
    assert files["lib/appsdk/appsdk-status"].mode == 0o755
    assert confirmation_units(app) == ("appsdk-rollback-check.service",
                                       "appsdk-health-hello-http.service")


def test_watchdog_is_capped_at_the_board_maximum() -> None:
    app = load_appliance(REPO / "examples/hello")
    assert watchdog_seconds(app, load_board("x86-uefi")) == 30
    assert watchdog_seconds(app, load_board("rpi4")) == 15  # bcm2835-wdt: ~16 s hardware max


@pytest.fixture()
def http_port():  # type: ignore[no-untyped-def]
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def check(*args: str) -> int:
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, timeout=30).returncode


def test_health_check_script_url(http_port: int) -> None:
    assert check("url", f"http://127.0.0.1:{http_port}/health", "3") == 0
    assert check("url", f"http://127.0.0.1:{http_port}/broken", "2") == 1


def test_health_check_script_command_and_retry(tmp_path: Path) -> None:
    assert check("command", "true", "1") == 0
    assert check("command", "false", "1") == 1
    flag = tmp_path / "ready"
    # Passes once the condition becomes true within the timeout.
    subprocess.Popen(["bash", "-c", f"sleep 1; touch {flag}"])
    assert check("command", f"test -e {flag}", "10") == 0


def test_a_check_is_one_probe() -> None:
    from appsdk.contract.confirm import check_target
    from appsdk.core.errors import ConfigError
    from appsdk.spec.appliance import CommandProbe, UnitProbe, UrlProbe

    by_key = HealthCheck("a", unit="web.service")
    assert by_key == HealthCheck("a", UnitProbe("web.service"))
    assert (by_key.unit, by_key.command, by_key.url) == ("web.service", None, None)
    assert check_target(HealthCheck("b", CommandProbe("true"))) == ("command", "true")
    assert check_target(HealthCheck("c", UrlProbe("http://x/"))) == ("url", "http://x/")
    for bad in ({}, {"unit": "a.service", "url": "http://x/"}):
        with pytest.raises(ConfigError, match="needs exactly one of command, unit, url"):
            HealthCheck("d", **bad)  # type: ignore[arg-type]
