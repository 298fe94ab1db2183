"""Labeling engines side by side: the local engine vs the ray engine (a local Ray) on the same images, one run.

    DKIT_HOME=... .venv/bin/python tools/engines_bench.py --out /tmp/engines [--actors 2] [--only coco128|folder]

Two cases, each labelled from scratch by both engines into their own run folders (fresh teacher caches):
- coco128 with the real YOLOv8n teacher (../shared/assets/data/coco128, yolov8n.pt in the model store);
- a folder of 2,000+ images made from ../shared/assets (coco128, photos, the ImageNet sample: each image and
  four variants: mirrored, cropped, shrunk, brightened), with a small random open_clip teacher (ViT-S-32).

Prints and writes OUT/engines.json: per case and engine the wall time of `label_images` (Ray's start-up
included), the ray engine's own time on the cluster (start-up excluded), images/s, the ratio ray/local, and
whether labels.jsonl is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
sys.path.insert(0, str(ROOT))

CLIP_KIT = """\
name: folder
data: {val: 0.1}
ontology:
  classes:
    animal: [an animal]
    food: [food]
    person: [a person]
    vehicle: [a vehicle]
  background: [an empty background]
teacher: {kind: clip, model: ViT-S-32, pretrained: random, batch: 32}
student: {kind: yolo-cls, model: yolov8n-cls.yaml, imgsz: 224}
"""


def make_folder(dest: Path) -> Path:
    """Every shared image and four variants of it, as JPEGs (2,000+ distinct files)."""
    if dest.is_dir() and len(list(dest.iterdir())) >= 2000:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in ASSETS.joinpath("data").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    for k, src in enumerate(sources):
        bgr = cv2.imread(str(src))
        if bgr is None:
            continue
        h, w = bgr.shape[:2]
        variants = [bgr, bgr[:, ::-1], bgr[h // 8: h - h // 8, w // 8: w - w // 8],
                    cv2.resize(bgr, (max(32, w // 2), max(32, h // 2)), interpolation=cv2.INTER_AREA),
                    cv2.convertScaleAbs(bgr, alpha=1.0, beta=25)]
        for v, img in enumerate(variants):
            cv2.imwrite(str(dest / f"{k:04d}_{v}_{src.stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return dest


def run_case(name: str, kit_for, out: Path, actors: int) -> dict:
    from dkit.distill.label import label_images

    result = {"case": name}
    for engine in ("local", "ray"):
        run = out / f"{name}-{engine}"
        shutil.rmtree(run, ignore_errors=True)
        kit = kit_for(engine, actors)
        start = time.perf_counter()
        labelled = label_images(kit, run, progress=False, report=False)
        wall = time.perf_counter() - start
        n = labelled.counts["files"]
        result[engine] = {"files": n, "seconds": round(wall, 2), "images_per_s": round(n / wall, 2),
                          "inferred": labelled.counts["inferred"]}
        if engine == "ray":
            result[engine] |= {"actors": labelled.counts["actors"], "cluster_seconds": labelled.counts["seconds"],
                               "cluster_images_per_s": round(n / labelled.counts["seconds"], 2),
                               "duplicates_dropped": labelled.counts["duplicates_dropped"]}
    result["ratio_wall"] = round(result["local"]["seconds"] / result["ray"]["seconds"], 3)
    result["ratio_cluster"] = round(result["local"]["seconds"] / result["ray"]["cluster_seconds"], 3)
    a, b = (out / f"{name}-{e}" / "labels" / "labels.jsonl" for e in ("local", "ray"))
    result["labels_identical"] = a.read_bytes() == b.read_bytes()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--only", choices=("coco128", "folder"))
    args = ap.parse_args()
    from dkit.core.kit import load_kit

    args.out.mkdir(parents=True, exist_ok=True)
    cases = []
    if args.only in (None, "coco128"):
        coco = ASSETS / "data" / "coco128" / "images" / "train2017"
        cases.append(run_case("coco128", lambda engine, actors: load_kit(
            ROOT / "datasets" / "coco128" / "kit.yaml", data=coco,
            overrides=[f"label.engine={engine}", f"label.actors={actors}"]), args.out, args.actors))
    if args.only in (None, "folder"):
        folder = make_folder(args.out / "images")
        kit_file = args.out / "folder-kit.yaml"
        kit_file.write_text(CLIP_KIT)
        cases.append(run_case("folder", lambda engine, actors: load_kit(
            kit_file, data=folder, overrides=[f"label.engine={engine}", f"label.actors={actors}"]),
            args.out, args.actors))
    report = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "cases": cases}
    (args.out / "engines.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(c["labels_identical"] for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
