"""specgate: verification suite for hybrid MTP + n-gram speculative decoding."""

__version__ = "0.1.0"
