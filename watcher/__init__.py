"""b2-zip-watcher: turn lists of objects in a B2 bucket into streamed ZIP objects."""

__version__ = "0.1.0"
