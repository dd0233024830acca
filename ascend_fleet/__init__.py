"""ascend-fleet: the Python side of the toolkit (topology engine, recipes, flag checks)."""

__version__ = "0.1.0"
