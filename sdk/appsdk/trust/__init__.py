"""trust: signing keys (the update key today; the Secure Boot keys next). May import core
and spec."""
