"""How to install one of distill-kit's optional extras, in words that work where the message is read.

    from dkit.edge.infer.extras import install_hint

    install_hint("ncnn")      # "pip install 'ncnn>=1.0.20240410' (the ncnn extra; ... dkit device-pack --extra ncnn)"
    install_hint("distill")   # "from a distill-kit checkout: pip install -c constraints.txt '.[distill]' ..."

distill-kit is not on PyPI (docs/WORKFLOW.md, "Run on a device"), so `pip install 'distill-kit[EXTRA]'` fails. A device
backend's extra (ncnn, openvino) is only its packages: they are named, with the versions the installed distill-kit
asks for (its metadata, else the copy below), and the offline route (`dkit device-pack --extra`). The training
extras need the checkout (`make` installs every extra), with constraints.txt's torch pin. Every hint the kit prints
(a missing extra's error, a backend that is not installed, `dkit doctor`, the bundle README) comes from here.
"""

from __future__ import annotations

import re
import shlex
from importlib import metadata

PROJECT = "distill-kit"
DEVICE_EXTRAS = ("ncnn", "openvino")  # on a device: the packages alone (pip, or the device pack's wheels)
# pyproject.toml's requirements of the device extras, for an interpreter without distill-kit's metadata
FALLBACK = {"ncnn": ("ncnn>=1.0.20240410",), "openvino": ("openvino>=2024.0",)}


def extra_requirements(extra: str) -> tuple[str, ...]:
    """The requirements of `extra` as the installed distill-kit states them (markers dropped), else FALLBACK's."""
    try:
        lines = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        lines = []
    found = []
    for line in lines:
        req, _, marker = line.partition(";")
        m = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if m and m.group(1) == extra:
            found.append(req.strip().replace(" ", ""))
    return tuple(found) or FALLBACK.get(extra, ())


def install_hint(extra: str) -> str:
    """One clause saying how to install `extra` (never `pip install 'distill-kit[...]'`, which fails)."""
    reqs = extra_requirements(extra)
    if extra in DEVICE_EXTRAS and reqs:
        return (f"pip install {' '.join(shlex.quote(r) for r in reqs)} (the '{extra}' extra; on an offline device "
                f"the wheelhouse of `dkit device-pack --extra {extra}`)")
    return (f"from a distill-kit checkout: pip install -c constraints.txt '.[{extra}]' (`make` installs every extra; "
            f"distill-kit is not on PyPI)")
