"""Command groups this package adds to `memq` (entry-point group ``memq.cli``)."""
