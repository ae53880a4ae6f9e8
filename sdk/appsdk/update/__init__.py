"""update: what devices download after the build: the signed release directory and the
web server that serves it. May import core, spec, trust, contract and image; not the pipeline,
deliver or emulate."""
