"""The bundle, the device's contract with the export (`dkit.edge.bundle`), the bottom layer of the edge runtime.

- `manifest`: manifest.json as frozen, validated dataclasses (Manifest and its sections).
- `verifier`: open a bundle folder or .tar.gz and verify it (schema, every file's sha256, nothing unlisted).
- `kiosk_config`: the kiosk's limits, a section of a judge bundle's manifest (`judge.kiosk`).
- `hashing`, `home`: sha256 of files, $DKIT_HOME.

The verifier's public names are importable from here: `from dkit.edge.bundle import open_bundle`.
"""

from dkit.edge.bundle.verifier import Bundle, BundleError, NoSuchBundleError, open_bundle, verify

__all__ = ["Bundle", "BundleError", "NoSuchBundleError", "open_bundle", "verify"]
