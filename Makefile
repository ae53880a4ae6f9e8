# Quick start (Debian 12/13, as root):  make demo   |   make test
PYTHON ?= python3
APT_PACKAGES = mmdebstrap bubblewrap qemu-system-x86 ovmf mtools dosfstools fdisk \
               bmap-tools xz-utils zstd gnupg debian-archive-keyring ca-certificates \
               umockdev e2fsprogs util-linux

.PHONY: deps demo test unit vm device lint bench

deps:  ## install what appsdk and its tests need (apt + pip)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	$(PYTHON) -m pip install -q -e '.[test]'

demo: deps  ## build examples/hello and boot it in QEMU (console on this terminal)
	test -d build/demo-keys || appsdk keys generate examples/hello --keys build/demo-keys
	appsdk build examples/hello --keys build/demo-keys
	@echo "hello's /health is forwarded to http://127.0.0.1:8080/health once it is up"
	appsdk run examples/hello/build/x86-uefi --disk examples/hello/build/demo-disk.img \
	  --disk-size 6G --forward 8080:8080

test: deps  ## lint, unit tests, then VM tests (builds and boots real images)
	$(PYTHON) -m pytest -m 'vm or device or not (vm or device)'

unit:  ## fast tests only (no root, no network)
	$(PYTHON) -m pytest

vm:
	$(PYTHON) -m pytest -m vm

device:  ## flash tests on loop devices (root)
	$(PYTHON) -m pytest -m device

bench: deps
	$(PYTHON) bench/build_times.py
