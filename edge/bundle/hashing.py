"""The one sha256 of a file, used by every layer: the bundle verifier, the model store, the teacher cache.

    sha256_file(path) -> "9f86d0..."      # hex digest, read in 1 MiB chunks (weights files are large)

It lives in the edge layer (the lowest) because the device verifies bundles with it; everything above imports it
from here.
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
