"""kdumpd: arms Linux kdump and brings the crash dump home."""

__version__ = "0.1.0"
