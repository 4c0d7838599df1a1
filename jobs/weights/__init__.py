"""Pretrained backbone weights on the shared root: installed once by `memq data weights`, named by
grids, verified by sha256 each time a job loads them (design.md 7). Also the reading of state dicts
from local files that a setting or an option names (state_dict.py)."""
