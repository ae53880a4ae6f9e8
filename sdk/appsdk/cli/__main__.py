"""`python -m appsdk.cli`: the `appsdk` command without the console script (tests, benches)."""

import sys

from appsdk.cli import main

sys.exit(main())
