"""sidedoor: a peer-to-peer serverless intranet."""

__version__ = "0.1.0"
