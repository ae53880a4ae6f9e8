"""emulate: running a board in QEMU: the command line from board data, firmware variable
stores, the KVM probe. May import core, spec, trust, contract and image; not the pipeline,
deliver or update."""
