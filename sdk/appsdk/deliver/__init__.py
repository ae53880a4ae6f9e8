"""deliver: getting an image onto a device: block devices and their safety gate, flash and
verify, the USB bench (rpiboot), the serial console, file push and serial provisioning. May
import core, spec, trust, contract and image; not the pipeline, update or emulate."""
