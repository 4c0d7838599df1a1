"""Pretrained backbone weights on the shared root: installed once by `memq data weights`, named by
grids, verified by sha256 each time a job loads them (design.md 7)."""
