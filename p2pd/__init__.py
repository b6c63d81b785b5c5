"""p2pd: a peer-to-peer messaging daemon on ZeroMQ."""

__version__ = "0.1.0"
