"""The kit's folder on this machine: $DKIT_HOME, default ~/.cache/dkit.

    dkit_home() -> Path("/home/me/.cache/dkit")

The model store (dkit.core.store) keeps weights and data sets there; on the device the runtime keeps its
TensorRT engine cache there (trt-cache/). One definition, in the lowest layer, so both agree.
"""

from __future__ import annotations

import os
from pathlib import Path


def dkit_home() -> Path:
    return Path(os.environ.get("DKIT_HOME") or Path.home() / ".cache" / "dkit").expanduser()
