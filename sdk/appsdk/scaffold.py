"""`appsdk init DIR`: a new appliance directory that builds as it is."""

from __future__ import annotations

from pathlib import Path

from .config import FILENAME, ID_PATTERN
from .errors import ConfigError

TEMPLATE = """\
# appliance.yaml: what this appliance is. Reference: docs/appliance-yaml.md
schema: 1
id: {id}
name: {id}
version: "0.1"
board: {board}

base:
  suite: trixie
  packages: []          # extra Debian packages

overlay: overlay        # files copied into the image: overlay/usr/... and overlay/etc/...
services: []            # units to enable, e.g. [myapp.service]

partitions:
  esp: 256M
  usr: 1G               # each of the two /usr slots
  var_min: 2G           # /var is made on first boot and grown to the end of the disk

console:
  autologin: false      # true: root shell on the serial console (development only)

health: []              # checks that gate boot confirmation (see docs)
update:
  automatic: false
"""


def init(directory: Path, app_id: str | None = None, board: str = "x86-uefi") -> Path:
    import re

    app_id = app_id or directory.resolve().name.lower().replace("_", "-")
    if not re.fullmatch(ID_PATTERN, app_id):
        raise ConfigError(f"{app_id!r} is not a valid appliance id", field="--id",
                          hint="lowercase letters, digits and '-', at most 31 characters")
    config = directory / FILENAME
    if config.exists():
        raise ConfigError("already exists; not overwriting", file=str(config))
    (directory / "overlay/usr/lib/systemd/system").mkdir(parents=True, exist_ok=True)
    (directory / "overlay/etc").mkdir(parents=True, exist_ok=True)
    config.write_text(TEMPLATE.format(id=app_id, board=board))
    return config
