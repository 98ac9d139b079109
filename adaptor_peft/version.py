"""The library version, in a module of its own so that low layers (the adaptor-file header) can read it."""

__version__ = "0.1.0"
