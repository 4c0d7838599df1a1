"""Memory Encoding Model (Mem): typed config and network."""
