"""contract: what build time and everything after it (the device, flash, release, inspect)
agree on: the partition layout, the on-device files and boot confirmation, update file names
and SHA256SUMS, the ESP firmware record, build.json. The device scripts they install are in
appsdk/data/device. May import core and spec."""
