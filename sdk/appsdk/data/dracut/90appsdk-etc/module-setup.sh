#!/bin/bash
# shellcheck disable=SC2154  # moddir, initdir, systemdsystemunitdir come from dracut
# appsdk: fill the tmpfs root's /etc from /usr/share/factory/etc before PID 1 starts,
# and bring the persistent machine-id back from /var.

check() {
    return 0
}

depends() {
    echo systemd
}

install() {
    inst_multiple cp mkdir mount umount cat mv rm
    inst_script "$moddir/appsdk-factory-etc.sh" /usr/lib/appsdk/appsdk-factory-etc.sh
    inst_simple "$moddir/appsdk-factory-etc.service" \
        "$systemdsystemunitdir/appsdk-factory-etc.service"
    # Required, not wanted: initrd-fs.target fails with it, and the boot stops.
    mkdir -p "$initdir/$systemdsystemunitdir/initrd-fs.target.requires"
    ln_r "$systemdsystemunitdir/appsdk-factory-etc.service" \
        "$systemdsystemunitdir/initrd-fs.target.requires/appsdk-factory-etc.service"
}
