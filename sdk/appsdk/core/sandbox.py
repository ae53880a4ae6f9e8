"""Run a program from another OS tree (the tools tree, or the appliance rootfs) with
bubblewrap: the tree's /usr and /etc read-only, chosen host paths bound at the same place.
No mounts leak to the host and nothing in the tree is modified."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.runner import Result, Runner, require


@dataclass(frozen=True)
class Sandbox:
    tree: Path
    binds: tuple[Path, ...] = ()
    ro_binds: tuple[Path, ...] = ()

    def wrap(self, argv: Sequence[str | Path], bwrap: str | None = None) -> list[str]:
        """The bwrap command line that runs `argv` here; `bwrap` is its path (default:
        looked up on PATH). `run` asks the runner, so a FakeRunner needs no bwrap."""
        args = [
            bwrap or require("bwrap"), "--die-with-parent", "--unshare-ipc", "--unshare-uts",
            "--ro-bind", str(self.tree / "usr"), "/usr",
            "--ro-bind", str(self.tree / "etc"), "/etc",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib",
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp",
            "--setenv", "PATH", "/usr/bin:/usr/sbin",
            "--setenv", "TMPDIR", "/var/tmp",
        ]
        if (self.tree / "usr/lib64").exists():
            args += ["--symlink", "usr/lib64", "/lib64"]
        for path in self.ro_binds:
            args += ["--ro-bind", str(path), str(path)]
        for path in self.binds:
            args += ["--bind", str(path), str(path)]
        return [*args, "--", *(str(a) for a in argv)]

    def run(self, runner: Runner, argv: Sequence[str | Path], **kwargs: object) -> Result:
        return runner.run(self.wrap(argv, runner.which("bwrap")),
                          **kwargs)  # type: ignore[arg-type]
