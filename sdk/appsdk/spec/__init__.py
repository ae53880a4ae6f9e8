"""spec: what the user and the board profiles say. YAML reading with line numbers, field
validators, appliance.yaml, board profiles, pinned firmware manifests, `appsdk init`. May
import core."""
