"""The version of the rechub-serving-annoy distribution, defined once."""

__version__ = "0.2.0"
