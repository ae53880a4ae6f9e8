"""Every test run: each test file's line in the progress output starts with the minutes since
the session began, so a CI log cut off at its time limit still shows where the time went."""

from __future__ import annotations

import time

import pytest


class ModuleClock:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.module = ""

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        module = nodeid.split("::", 1)[0]
        if module == self.module:
            return
        self.module = module
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and reporter.verbosity == 0:
            # The reporter has just written the file's name (trylast: after it).
            reporter.write(f"[{(time.monotonic() - self.started) / 60:.1f} min] ")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ModuleClock(config), "appsdk-module-clock")
