"""Running untrusted programs: the worker pool (pool), the forked, confined child (child)."""
