"""When `appsdk run --accel auto` trusts KVM: only if the board's firmware printed on its
serial console under it, and KVM reported no internal error."""

from __future__ import annotations

from appsdk.emulate.qemu import kvm_verdict

# What OVMF writes first (console init), as read from a real run under TCG.
OVMF_FIRST_BYTES = b"\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01H"
# What QEMU printed on this project's hosts when OVMF ran under KVM (the guest is stopped,
# QEMU itself keeps running: a "still alive after N s" probe said yes).
KVM_FAILURE = (b"KVM internal error. Suberror: 1\nextra data[0]: 0x0000000000000000\n"
               b"emulation failure\nEAX=00000000 EBX=00000000 ...\n")


def test_firmware_output_without_errors_means_usable() -> None:
    assert kvm_verdict(OVMF_FIRST_BYTES, b"")
    assert kvm_verdict(b"U-Boot 2026.10\r\n", b"qemu: warning: unrelated\n")


def test_silence_or_an_internal_error_means_not_usable() -> None:
    assert not kvm_verdict(b"", b"")  # nothing ran far enough to print
    assert not kvm_verdict(b"  \r\n", b"")
    assert not kvm_verdict(b"", KVM_FAILURE)
    assert not kvm_verdict(OVMF_FIRST_BYTES, KVM_FAILURE)  # printed, then died
