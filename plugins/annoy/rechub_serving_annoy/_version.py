"""The version of the rechub-serving-annoy distribution, defined once."""

__version__ = "0.1.0"
