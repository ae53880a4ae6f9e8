# Quick start (Debian 12/13, as root):  make demo   |   make test
PYTHON ?= python3
APT_PACKAGES = mmdebstrap bubblewrap qemu-system-x86 qemu-system-arm qemu-user-static ovmf \
               mtools dosfstools fdisk bmap-tools xz-utils zstd gnupg debian-archive-keyring \
               ca-certificates openssl umockdev e2fsprogs util-linux mount arch-test python3-pip \
               python3-venv swtpm swtpm-tools cryptsetup-bin
BINFMT = /proc/sys/fs/binfmt_misc

.PHONY: deps binfmt demo test unit vm device dist lint bench

deps:  ## install what appsdk and its tests need (apt + pip)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	# Debian's own python3 refuses system-wide pip installs (PEP 668) unless told.
	PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install -q -e '.[test]'
	$(MAKE) binfmt

# arm64 images are built on x86-64 hosts by running arm64 binaries under qemu-user. systemd
# registers binfmt handlers at boot; containers and CI machines without it need this.
binfmt:  ## register qemu-user for arm64 binaries (flags F: usable inside chroots)
	test -e $(BINFMT)/register || mount -t binfmt_misc binfmt_misc $(BINFMT)
	test -e $(BINFMT)/qemu-aarch64 || cat /usr/lib/binfmt.d/qemu-aarch64.conf > $(BINFMT)/register
	grep -q enabled $(BINFMT)/qemu-aarch64

demo: deps  ## build examples/hello and boot it in QEMU (console on this terminal)
	test -d build/demo-keys || appsdk keys generate examples/hello --keys build/demo-keys
	appsdk build examples/hello --keys build/demo-keys
	@echo "hello's /health is forwarded to http://127.0.0.1:8080/health once it is up"
	appsdk run examples/hello/build/x86-uefi --disk examples/hello/build/demo-disk.img \
	  --disk-size 6G --forward 8080:8080

test: deps  ## lint, unit, wheel, loop-device and VM tests (builds and boots real images)
	$(PYTHON) -m pytest -m 'vm or device or dist or not (vm or device or dist)' --durations=25

unit:  ## fast tests only (no root, no network)
	$(PYTHON) -m pytest

vm:
	$(PYTHON) -m pytest -m vm

device:  ## flash tests on loop devices (root)
	$(PYTHON) -m pytest -m device

dist:  ## build the wheel, install it in a fresh venv, run it away from the checkout
	$(PYTHON) -m pytest -m dist

bench: deps
	$(PYTHON) bench/build_times.py
