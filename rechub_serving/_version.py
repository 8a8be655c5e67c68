"""The version of the core distribution, defined once (pyproject reads it)."""

__version__ = "0.1.0"
