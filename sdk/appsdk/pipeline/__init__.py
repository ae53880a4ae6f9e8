"""pipeline: the build, from appliance.yaml to the image and its update files: the
orchestration (builder), the tools tree, the stages, the Raspberry Pi ESP firmware. May
import core, spec, trust, contract and image (not image.inspect: a stage never reads back
what it wrote)."""
