"""Distill Kit: distill a big zero-shot vision teacher into a small model that runs offline on the edge.

The `dkit` package is the front door shared by every layer: the CLI (`dkit.cli`), the kit YAML
contract (`dkit.kit`), the offline model store (`dkit.store`) and the error types (`dkit.errors`).
It imports nothing heavy at import time, so it works on a base (edge-only) install.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distill-kit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
