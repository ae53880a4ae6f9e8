"""core: what every other part uses and that knows nothing of appliances: errors and
exit codes, the one subprocess runner and its sandbox, progress reporting, the cache, hashing,
sizes, safe file opening, host checks. Imports nothing of appsdk outside core."""
