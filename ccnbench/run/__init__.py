"""Planning and running cases: a sweep's configuration and plan, its worker processes, contests
and single case groups, and the in-process commands `check` and `export`."""
