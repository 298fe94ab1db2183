"""The bundle's `checks/`: held-out images and the fp32 model's results on them, for the on-device accuracy check.

    from dkit.export.device_checks import write_checks

    manifest = write_checks(bundle_dir, kit, manifest, held_out)   # after write_manifest; returns the new one

`export.device_checks` held-out images (default 32) go into checks/NNN.jpg (quality 95, scaled down to fit the
model's input size), the edge runtime's fp32 onnxruntime results on the decoded pixels into
checks/reference.json, and the manifest's `checks` names it with the accuracy guard and this machine's
CPU architecture. A device of another architecture runs a reduced-precision model against it before
`--precision auto` uses it (dkit.edge.infer.device_check). The same check is run here on every reduced-precision model
this install can run, and its figures are kept in the manifest's `device_checks` report (the device's reference
point: on the export machine a model agrees this well).
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from pathlib import Path

import numpy as np

from dkit.core.errors import DkitError
from dkit.core.files import atomic_write, write_json
from dkit.edge.bundle.manifest import DeviceChecks, Manifest
from dkit.edge.infer.backends.base import RuntimeConfigError

log = logging.getLogger(__name__)
CHECKS = "checks"
REFERENCE = f"{CHECKS}/reference.json"
JPEG_QUALITY = 95  # about 40 kB a 320 px photo (PNG: 250 kB); the reference is computed on the decoded pixels


def write_checks(bundle_dir: Path, kit, manifest: Manifest, held_out: list[np.ndarray]) -> Manifest:
    """Write checks/ into bundle_dir (already holding a verified manifest); return the manifest naming them."""
    from dkit.edge.bundle import open_bundle
    from dkit.edge.infer.device_check import load_image, result_doc
    from dkit.edge.infer.runtime import Runtime
    from dkit.export.manifest import write_manifest

    images = held_out[:kit.export.device_checks]
    if not images:
        return manifest
    (bundle_dir / CHECKS).mkdir()
    names = [_write_jpeg(bundle_dir, f"{CHECKS}/{i:03d}.jpg", _fit(rgb, max(manifest.preprocess.size)))
             for i, rgb in enumerate(images)]
    manifest = write_manifest(bundle_dir, manifest)  # the images listed: the runtime may open them
    with open_bundle(bundle_dir, announce=False) as bundle, Runtime(
            bundle, backend="onnxruntime", precision="fp32", warmup=0, providers=["cpu"],
            verify=False) as rt:  # fp32 on the CPU
        results = [rt(load_image(bundle, n), frame_id=i) for i, n in enumerate(names)]
        letterbox = rt.spec.letterbox if rt.spec.resize == "letterbox" else None
    doc = {"machine": platform.machine(), "backend": "onnxruntime", "precision": "fp32", "letterbox": letterbox,
           "images": [result_doc(r, n) for r, n in zip(results, names, strict=True)]}
    write_json(bundle_dir / REFERENCE, doc)
    checks = DeviceChecks(REFERENCE, kit.export.accuracy_guard, platform.machine())
    manifest = write_manifest(bundle_dir, dataclasses.replace(manifest, checks=checks))
    figures = _figures_here(bundle_dir)
    info = dict(manifest.info) | {"device_checks": {platform.machine(): figures}}
    return write_manifest(bundle_dir, dataclasses.replace(manifest, info=info))


def _figures_here(bundle_dir: Path) -> dict[str, float]:
    """The on-device check of every reduced-precision candidate here, run here: {"ncnn/int8": 0.97, ...}."""
    from dkit.edge.bundle import open_bundle
    from dkit.edge.infer.device_check import check
    from dkit.edge.infer.select import candidates

    out = {}
    with open_bundle(bundle_dir, announce=False) as bundle:
        for backend, precision in candidates(bundle.manifest):
            if precision == "fp32":
                continue
            name = f"{backend}/{precision}"
            try:  # the CPU providers: what the reference ran on
                outcome = check(bundle, backend, precision, providers=["cpu"] if backend == "onnxruntime" else None)
            except RuntimeConfigError as e:
                log.warning("device check here, %s: could not run (%s)", name, e)
                out[name] = None
                continue
            out[name] = outcome.agreement
            if outcome.passed:
                log.info("device check here, %s: %s", name, outcome.describe())
            else:  # the guard passed on the export's own inputs, not on the shipped check images
                log.warning("device check here, %s: %s; a device of another CPU architecture will leave it out of "
                            "--precision auto", name, outcome.describe())
    return out


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) scaled down (area) so its longer side is at most `side`; a smaller image is kept as it is."""
    import cv2

    h, w = rgb.shape[:2]
    r = side / max(h, w)
    if r >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)


def _write_jpeg(root: Path, name: str, rgb: np.ndarray) -> str:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DkitError(f"could not encode check image {name} as JPEG")
    atomic_write(root / name, data.tobytes())
    return name

