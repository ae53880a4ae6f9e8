#!/bin/sh
# Runs in the initrd. /etc must be complete when PID 1 starts (unit links, passwd,
# nsswitch), so it cannot be filled later by tmpfiles.
set -e
mkdir -p /sysroot/etc
cp -a /sysroot/usr/share/factory/etc/. /sysroot/etc/

# The machine-id lives in /var so the device keeps its identity across boots and updates.
# /var is made by systemd-repart on first boot, so it may not exist yet.
udevadm settle --timeout=10 || :
if [ -b /dev/disk/by-partlabel/var ]; then
    mkdir -p /run/appsdk-var
    if mount -o ro /dev/disk/by-partlabel/var /run/appsdk-var; then
        if [ -s /run/appsdk-var/lib/appsdk/machine-id ]; then
            cat /run/appsdk-var/lib/appsdk/machine-id > /sysroot/etc/machine-id
        fi
        umount /run/appsdk-var
    fi
fi
