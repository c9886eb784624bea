"""Tools that work on a stopped data directory: `doctor` and `rotate-secret-key`."""
