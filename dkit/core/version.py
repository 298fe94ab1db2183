"""The installed distill-kit version (what a bundle's manifest records as `dkit_version`)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distill-kit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
