#!/bin/sh
# Runs in the initrd. /etc must be complete when PID 1 starts (unit links, passwd,
# nsswitch), so it cannot be filled later by tmpfiles. It is copied aside and renamed into
# place, with the machine-id from /var already in it: PID 1 finds a complete /etc or none.
# Any failure exits non-zero, and the unit (required by initrd-fs.target, OnFailure=
# emergency.target) stops the boot with the message on the console: a device never runs
# half-configured or with an invented machine-id.
# APPSDK_SYSROOT, APPSDK_SYS, APPSDK_DEV, APPSDK_VARMNT and APPSDK_CRYPTSETUP are for tests
# (unset on a device).
set -eu
SYSROOT=${APPSDK_SYSROOT:-/sysroot}
SYS=${APPSDK_SYS:-/sys}
DEV=${APPSDK_DEV:-/dev}
FACTORY=$SYSROOT/usr/share/factory/etc
NEW=$SYSROOT/.appsdk-etc.new
OLD=$SYSROOT/.appsdk-etc.old
VARMNT=${APPSDK_VARMNT:-/run/appsdk-var}
CRYPTSETUP=${APPSDK_CRYPTSETUP:-/usr/lib/systemd/systemd-cryptsetup}
VAR_MAPPED=$DEV/mapper/var

fail() {
    echo "appsdk-factory-etc: $*; stopping the boot" >&2
    exit 1
}

uevent() {  # uevent FILE KEY: a value from a sysfs uevent file
    while IFS='=' read -r key value; do
        [ "$key" = "$2" ] && { printf '%s\n' "$value"; return 0; }
    done < "$1"
    return 1
}

# The partitions of the disks holding this image's /usr (the kernel lists them in sysfs as
# soon as it has read the partition table, without waiting for udev); all partitions if
# /usr's cannot be told.
partitions() {
    disks=""
    for u in "$SYS"/class/block/*/uevent; do
        [ -f "$u" ] || continue
        [ "$(uevent "$u" PARTNAME || :)" = "usr_$VERSION" ] || continue
        disk=$(cd -P "${u%/uevent}/.." && pwd) || continue
        disks="$disks $disk"
    done
    if [ -z "$disks" ]; then
        echo "appsdk-factory-etc: no partition usr_$VERSION in $SYS: looking on all disks" >&2
        for u in "$SYS"/class/block/*/uevent; do echo "$u"; done
        return
    fi
    for disk in $disks; do
        for u in "$disk"/*/uevent; do echo "$u"; done
    done
}

# The /var partition on the disk /usr came from; none on a first boot (systemd-repart makes
# it later). Two of them would make the machine-id a guess: refused.
var_device() {
    found=""
    for u in $(partitions); do
        [ -f "$u" ] || continue
        [ "$(uevent "$u" PARTNAME || :)" = var ] || continue
        [ -z "$found" ] || fail "more than one partition named var ($found and $u)"
        found=$DEV/$(uevent "$u" DEVNAME) || fail "no DEVNAME in $u"
    done
    echo "$found"
}

pcr() {  # pcr N: the TPM's sha256 PCR N as the kernel shows it, or "?"
    cat "$SYS/class/tpm/tpm0/pcr-sha256/$1" 2>/dev/null || echo "?"
}

# A /var made with var.encrypt: tpm2 is LUKS2 whose key the TPM seals to PCR 7 and to PCR 11
# as the appliance's PCR key signed it. It is opened here, once: PCR 11 is at enter-initrd,
# a phase the UKI's signature covers, and PID 1's systemd-cryptsetup@var finds it open.
# A TPM that refuses stops the boot; nothing here or later reformats or recreates /var.
open_var() {  # open_var DEVICE: what to mount (DEVICE itself when it is not LUKS)
    if [ "$(head -c 4 "$1" 2>/dev/null | tr -d '\0')" != LUKS ]; then  # NULs: see starts_with
        echo "$1"
        return 0
    fi
    if [ ! -e "$VAR_MAPPED" ]; then
        # Its reasons go to the console too (it would log to the journal only).
        SYSTEMD_LOG_TARGET=console "$CRYPTSETUP" attach var "$1" - \
            tpm2-device=auto,headless=true >&2 || {
            echo "appsdk: /var is locked: this device's TPM did not unseal it (a disk from" \
                 "another device, a UKI the appliance's PCR key did not sign, or a cleared" \
                 "TPM; PCR 7 $(pcr 7), PCR 11 $(pcr 11)). /var is left as it is: unlock it" \
                 "with its recovery key (docs/tpm.md)" >&2
            fail "/var ($1) is encrypted and the TPM refused to unseal it"
        }
    fi
    echo "$VAR_MAPPED"
}

# The persistent machine-id, into the new /etc. A /var that exists but cannot be read
# stops the boot: going on would give the device a new identity ("first boot").
restore_machine_id() {
    var=$(var_device) || exit 1
    [ -n "$var" ] || return 0
    var=$(open_var "$var") || exit 1
    mkdir -p "$VARMNT"
    mount -o ro "$var" "$VARMNT" || fail "cannot mount /var ($var)"
    id=""
    if [ -e "$VARMNT/lib/appsdk/machine-id" ]; then
        id=$(cat "$VARMNT/lib/appsdk/machine-id") || { umount "$VARMNT"
            fail "cannot read the machine-id kept in /var"; }
    fi
    umount "$VARMNT" || :
    [ -n "$id" ] || return 0  # /var is new (first boot not finished yet): keep "uninitialized"
    case $id in
        *[!0-9a-f]*) fail "the machine-id kept in /var is not 32 hex digits" ;;
    esac
    [ ${#id} -eq 32 ] || fail "the machine-id kept in /var is not 32 hex digits"
    printf '%s\n' "$id" > "$NEW/machine-id" || fail "cannot write the machine-id"
}

[ -d "$FACTORY" ] || fail "$FACTORY is missing"
# shellcheck source=/dev/null
VERSION=$(. "$SYSROOT/usr/lib/os-release" && echo "$IMAGE_VERSION") ||
    fail "cannot read IMAGE_VERSION from $SYSROOT/usr/lib/os-release"
rm -rf "$NEW" "$OLD"
cp -a "$FACTORY" "$NEW" || fail "copying $FACTORY failed"
restore_machine_id
if [ -e "$SYSROOT/etc" ]; then
    mv "$SYSROOT/etc" "$OLD" || fail "cannot move the old $SYSROOT/etc aside"
fi
mv "$NEW" "$SYSROOT/etc" || fail "cannot rename the new /etc into place"
rm -rf "$OLD"
