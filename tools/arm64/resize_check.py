"""The preprocessing resizes alone, on this machine: a sha256 per (image, interpolation) of cv2.resize to the
detector's letterbox size (INTER_LINEAR, INTER_LINEAR_EXACT, INTER_AREA) and of dkit.edge.infer.preprocess.pil_bilinear
(numpy), written as JSON: `python resize_check.py IMAGES OUT.json`. Compare the two machines' files."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from dkit.edge.infer.preprocess import pil_bilinear
from dkit.edge.stream.sources import _decode

MODES = {"linear": cv2.INTER_LINEAR, "linear_exact": cv2.INTER_LINEAR_EXACT, "area": cv2.INTER_AREA}


def main() -> int:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    res: dict[str, dict] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        rgb = cv2.cvtColor(_decode(p), cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        r = min(320 / h, 320 / w)
        size = (max(round(w * r), 1), max(round(h * r), 1))
        row = {"decoded": hashlib.sha256(rgb.tobytes()).hexdigest()[:16]}
        arrays = {k: cv2.resize(rgb, size, interpolation=v) for k, v in MODES.items()}
        arrays["pil_bilinear_numpy"] = pil_bilinear(rgb, (size[1], size[0]))
        for k, a in arrays.items():
            row[k] = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
        np.savez_compressed(out.with_suffix("") .with_name(out.stem + "-" + p.stem + ".npz"), **arrays)
        res[p.name] = row
    out.write_text(json.dumps({"opencv": cv2.__version__, "images": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
