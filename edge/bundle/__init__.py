"""The bundle, the device's contract with the export (`dkit.edge.bundle`), the bottom layer of the edge runtime.

- `manifest`: manifest.json as frozen, validated dataclasses (Manifest and its sections; `schema` validates them).
- `verifier`: open a bundle folder or .tar.gz and verify it (schema, every file's sha256, nothing unlisted).
- `kiosk_config`: the kiosk's limits, a section of a judge bundle's manifest (`judge.kiosk`).
- `hashing`, `home`, `files`: sha256 of files, $DKIT_HOME, the atomic writer.

The verifier's public names are importable from here, loaded when first asked for (PEP 562), so importing a light
module of this package (kiosk_config, files, home) does not import numpy and the manifest:

    from dkit.edge.bundle import open_bundle
"""

from __future__ import annotations

import importlib

__all__ = ["Bundle", "BundleError", "NoSuchBundleError", "open_bundle", "verify"]


def __getattr__(name: str):
    """The verifier's names (`__all__`), imported on first use."""
    if name in __all__:
        return getattr(importlib.import_module("dkit.edge.bundle.verifier"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
