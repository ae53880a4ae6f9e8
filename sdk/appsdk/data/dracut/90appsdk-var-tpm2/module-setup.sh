#!/bin/bash
# shellcheck disable=SC2154  # moddir, initdir, systemdutildir, ... come from dracut
# appsdk var.encrypt: tpm2: what the initrd needs for appsdk-factory-etc to open /var with
# the TPM. systemd loads the TSS at run time (dlopen), which dracut cannot see, and Debian's
# tpm2-tss module is only offered with tpm2-tools in the image: the libraries are named here.
# systemd-pcrphase extends PCR 11 with enter-initrd, the phase the UKI's signed policy names.

# 255: only when asked for (dracut --add, by the initrd stage for var.encrypt: tpm2); 0 would
# put it in every generic initrd.
check() {
    require_binaries "$systemdutildir"/systemd-cryptsetup || return 1
    return 255
}

depends() {
    echo systemd-cryptsetup systemd-pcrphase appsdk-etc
}

install() {
    inst_multiple head "$systemdutildir"/systemd-cryptsetup
    inst_multiple -o "$systemdutildir"/system-generators/systemd-tpm2-generator \
        "$systemdsystemunitdir"/tpm2.target
    inst_libdir_file "libtss2-esys.so.*" "libtss2-mu.so.*" "libtss2-rc.so.*" \
        "libtss2-sys.so.*" "libtss2-tctildr.so.*" "libtss2-tcti-device.so.*"
    # systemd-cryptsetup opens a systemd-tpm2 token through libcryptsetup's token plugin;
    # without it: "No TPM2 metadata enrolled in LUKS2 header or TPM2 support not available".
    inst_libdir_file "cryptsetup/libcryptsetup-token-systemd-tpm2.so"
    inst_simple "$moddir/tpm2.conf" \
        "$systemdsystemunitdir/appsdk-factory-etc.service.d/tpm2.conf"
}
