"""polyq: a distributed task queue with pluggable brokers and result stores."""

__version__ = "0.1.0"
