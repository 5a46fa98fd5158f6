"""ievnet-bids: inner-ear total fluid space segmentation as a BIDS-App (IE-Vnet)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ievnet-bids")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
