"""The version of the core distribution, defined once (pyproject reads it)."""

__version__ = "0.2.0"
