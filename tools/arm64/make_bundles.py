"""Build (or reuse) the three bundles the arm64 parity check runs, with the repo's own code, on x86.

Bundles go to $DKIT_ARM64_HOME/bundles (default ~/.cache/dkit-arm64/bundles), never into the repo:
  detect/   yolov8n.pt exported to ONNX at 320 px + the manifest tests/edge/conftest.py `detect_bundle` writes
  classify/ the `cls-toy` kit of tests/export/test_export_kinds.py: 32 ImageNet photos, random CLIP teacher,
            a 64 px yolo-cls student for one epoch, `dkit export` (label -> train -> export)
  judge/    a clip-embed judge bundle (random CLIP teacher); copied from $DKIT_ARM64_JUDGE when given
            (e.g. /work/attack-bench/judge/run/bundle), else built with the `judge_run` kit of tests/conftest.py
Each one is reused when it already verifies with the device's verifier.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
HOME = Path(os.environ.get("DKIT_ARM64_HOME", Path.home() / ".cache" / "dkit-arm64"))
OUT = HOME / "bundles"
ASSETS = Path(os.environ.get("DKIT_ASSETS", REPO.parent / "shared" / "assets")).resolve()
SIZE = 320


def say(msg: str) -> None:
    print(f"[arm64 bundles] {msg}", flush=True)  # noqa: T201 - a command-line tool's output


def ok(bundle: Path) -> bool:
    from dkit.edge.bundle import open_bundle
    if not (bundle / "manifest.json").is_file():
        return False
    try:
        with open_bundle(bundle):
            return True
    except Exception as e:  # noqa: BLE001 - any failure means rebuild
        say(f"{bundle} does not verify ({e}); rebuilding")
        return False


def detect(dest: Path) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    import onnxruntime as ort
    import ultralytics

    from dkit.edge.bundle import open_bundle
    from dkit.export.manifest import write_manifest

    tmp = Path(tempfile.mkdtemp(prefix="dkit-arm64-yolo-"))
    shutil.copy(ASSETS / "models" / "yolov8n.pt", tmp / "yolov8n.pt")
    onnx = Path(ultralytics.YOLO(str(tmp / "yolov8n.pt")).export(format="onnx", imgsz=SIZE, dynamic=True,
                                                                  simplify=True, verbose=False))
    root = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy(onnx, root / "student.onnx")
    (root / "README.md").write_text("# yolov8n parity bundle (tools/arm64)\n")
    names = ultralytics.YOLO(str(onnx), task="detect").names
    session = ort.InferenceSession(str(root / "student.onnx"), providers=["CPUExecutionProvider"])
    write_manifest(root, {
        "name": "yolov8n-arm64", "task": "detect", "teacher": {"id": "yolo:yolov8n.pt", "random": False},
        "student": {"kind": "yolo-detect", "model": "yolov8n.pt", "imgsz": SIZE},
        "models": {"student": {"file": "student.onnx", "precision": "fp32", "opset": 17,
                               "inputs": [{"name": i.name, "shape": i.shape} for i in session.get_inputs()]}},
        "preprocess": {"resize": "letterbox", "size": [SIZE, SIZE], "pad_value": 114, "interpolation": "linear",
                       "channels": "RGB", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NCHW"},
        "decode": {"type": "yolov8-detect"}, "classes": [names[i] for i in range(len(names))],
        "thresholds": {"conf": 0.25, "iou": 0.7, "max_det": 300},
        "runtime": {"providers": [], "threads": 0, "max_fps": 0.0},
    })
    with open_bundle(root):
        pass
    shutil.rmtree(dest, ignore_errors=True)
    root.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _distill_export(kit_text: str, count: int, dest: Path) -> None:
    from dkit.core.kit import load_kit
    from dkit.core.store import ModelStore
    from dkit.distill.label import label_images
    from dkit.distill.students import student_module
    from dkit.export.bundle import export_bundle

    tmp = Path(tempfile.mkdtemp(prefix="dkit-arm64-kit-"))
    imgs = tmp / "imgs"
    imgs.mkdir()
    for p in sorted((ASSETS / "data/imagenet-sample").glob("*.JPEG"))[:count]:
        (imgs / p.name).symlink_to(p)
    (tmp / "kit.yaml").write_text(kit_text.format(images=imgs))
    kit = load_kit(tmp / "kit.yaml")
    store = ModelStore(tmp / "store", offline=True)
    run = tmp / "run"
    label_images(kit, run, store=store, progress=False, report=False)
    student_module(kit).train(kit, run, store=store, progress=False)
    export_bundle(kit, run, store=store)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(run / "bundle", dest)
    shutil.rmtree(tmp, ignore_errors=True)


CLS_KIT = """\
name: cls-toy
data: {{images: {images}, val: 8}}
ontology: {{classes: {{animal: [an animal], thing: [a thing]}}}}
teacher: {{kind: clip, model: ViT-S-32-alt, pretrained: random, abstain: {{margin: 0.0}}}}
student: {{kind: yolo-cls, model: yolov8n-cls.pt, imgsz: 64, epochs: 1, batch: 8}}
export: {{precisions: [fp32], archive: false}}
"""

JUDGE_KIT = """\
name: judge-toy
data: {{images: {images}, val: 0.25, seed: 0}}
ontology:
  classes:
    animal: [an animal, a bird]
    food: [food]
    vehicle: [a car, a boat]
  background: [an empty background]
teacher: {{kind: clip, model: ViT-S-32-alt, pretrained: random, templates: ["a photo of {{}}.", "a sketch of {{}}."]}}
student: {{kind: clip-embed, model: mobilenetv3_small_050, imgsz: 64, epochs: 1, batch: 16}}
judge: {{prompt: a cat, prompts: [a cat, a raccoon driving a tractor], unsafe_prompts: [a weapon]}}
export: {{precisions: [fp32], calibration_images: 8, archive: false}}
"""


def data() -> None:
    """$DKIT_ARM64_HOME/data/images: the first $DKIT_ARM64_IMAGES (default 20) ImageNet photos + 4 of the shared
    photos (copied, never modified; qemu runs yolov8n at 320 px at about 8 s a frame, so the set is small);
    data/doodles: 3 Quick Draw doodles per class rendered the kiosk way (dkit.distill.quickdraw.render) as PNG."""
    import cv2
    import numpy as np

    from dkit.distill.quickdraw import render

    imgs, doodles = HOME / "data" / "images", HOME / "data" / "doodles"
    count = int(os.environ.get("DKIT_ARM64_IMAGES", "20"))
    picked = sorted((ASSETS / "data/imagenet-sample").glob("*.JPEG"))[:count]
    picked += [ASSETS / "data/photos" / n for n in ("pets.jpg", "kite_and_cold.jpg", "face.jpg", "cat.bmp")]
    want = "\n".join(p.name for p in picked)
    if not (imgs / ".done").is_file() or (imgs / ".done").read_text() != want:
        shutil.rmtree(imgs, ignore_errors=True)
        imgs.mkdir(parents=True)
        for p in picked:
            shutil.copy(p, imgs / p.name)
        (imgs / ".done").write_text(want)
    if not (doodles / ".done").is_file():
        shutil.rmtree(doodles, ignore_errors=True)
        doodles.mkdir(parents=True)
        for npy in sorted((ASSETS / "data/quickdraw").glob("*.npy")):
            arr = np.load(npy, mmap_mode="r")
            for i in range(3):
                rgb = render(arr[i * 1000])
                cv2.imwrite(str(doodles / f"{npy.stem}_{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        (doodles / ".done").write_text("ok")
    say(f"data: {len(picked)} images, {len(list(doodles.glob('*.png')))} doodles under {HOME / 'data'}")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    data()
    os.environ.setdefault("DKIT_OFFLINE", "1")
    for name in ("detect", "classify", "judge"):
        dest = OUT / name
        if ok(dest):
            say(f"reusing {dest}")
            continue
        say(f"building {name} bundle -> {dest}")
        if name == "detect":
            detect(dest)
        elif name == "classify":
            _distill_export(CLS_KIT, 32, dest)
        else:
            src = os.environ.get("DKIT_ARM64_JUDGE")
            if src and ok(Path(src)):
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(src, dest)
            else:
                _distill_export(JUDGE_KIT, 40, dest)
        if not ok(dest):
            say(f"{name} bundle did not verify")
            return 1
        say(f"{name} bundle ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
