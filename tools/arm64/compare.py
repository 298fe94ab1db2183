"""Compare the arm64 side of the parity check with the x86 side; print a report, write it as JSON, exit 1 when a
comparison exceeds its bound.

    python compare.py X86_DIR ARM_DIR --report report.json

Bounds (issue #13): detector: the same classes on every image and every box within 0.5 px; classifier: the same
top-1 class on every image; judge: every cosine (and the new prompt's embedding) within 1e-4.
Beyond the `dkit run --jsonl` results it breaks a difference down into its stages from probe.py's arrays: decoded
pixels (sha256), preprocessed input tensors, raw model outputs on each side's own tensors, and raw outputs of the
arm64 model on the x86 tensors (inference alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BOX_PX = 0.5
COS = 1e-4


def jsonl(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]
    return {r["name"]: r for r in rows if "name" in r}


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compare_detect(x: dict, a: dict) -> dict:
    names = sorted(set(x) | set(a))
    missing = [n for n in names if n not in x or n not in a]
    differ, max_box, max_conf, boxes = [], 0.0, 0.0, 0
    for n in names:
        if n in missing:
            continue
        dx, da = x[n]["detections"], a[n]["detections"]
        boxes += len(dx)
        used, unmatched = set(), []
        for d in dx:
            best, bj = 0.0, None
            for j, e in enumerate(da):
                if j in used or e["class"] != d["class"]:
                    continue
                v = iou(d["box"], e["box"])
                if v > best:
                    best, bj = v, j
            if bj is None or best < 0.5:
                unmatched.append(("x86 only", d["class"], d["conf"]))
                continue
            used.add(bj)
            e = da[bj]
            max_box = max(max_box, max(abs(p - q) for p, q in zip(d["box"], e["box"], strict=True)))
            max_conf = max(max_conf, abs(d["conf"] - e["conf"]))
        unmatched += [("arm64 only", e["class"], e["conf"]) for j, e in enumerate(da) if j not in used]
        if unmatched:
            differ.append({"image": n, "unmatched": unmatched})
    ok = not missing and not differ and max_box <= BOX_PX
    return {"images": len(names), "x86_boxes": boxes, "missing_images": missing,
            "images_with_different_detections": len(differ), "differences": differ[:20],
            "max_box_diff_px": round(max_box, 3), "max_conf_diff": round(max_conf, 4),
            "bound": f"same classes, boxes within {BOX_PX} px (JSONL rounds boxes to 0.1 px, conf to 1e-4)",
            "ok": ok}


def compare_classify(x: dict, a: dict) -> dict:
    names = sorted(set(x) & set(a))
    agree = sum(x[n]["top"][0]["class"] == a[n]["top"][0]["class"] for n in names)
    max_prob = max((abs(p["prob"] - q["prob"]) for n in names for p, q in zip(x[n]["top"], a[n]["top"],
                                                                                   strict=False)), default=0.0)
    ok = agree == len(names) == len(set(x) | set(a))
    return {"images": len(names), "top1_agreement": round(agree / max(len(names), 1), 4),
            "max_prob_diff": round(max_prob, 4), "bound": "same top-1 class on every image", "ok": ok}


def stages(xd: Path, ad: Path, tag: str, images: Path | None = None) -> dict:
    """Where a difference starts: decode, preprocessing, inference."""
    if not (xd / f"{tag}.npz").is_file() or not (ad / f"{tag}.npz").is_file():
        return {}
    x, a = np.load(xd / f"{tag}.npz"), np.load(ad / f"{tag}.npz")
    out = {"decoded_pixels_identical": int((x["decoded_sha256"] == a["decoded_sha256"]).sum()),
           "of": int(len(x["names"])),
           "tensor_max_abs_diff": float(np.abs(x["tensors"] - a["tensors"]).max()),
           "tensors_identical": int(sum(np.array_equal(p, q) for p, q in zip(x["tensors"], a["tensors"],
                                                                                strict=True))),
           "raw_max_abs_diff": float(np.abs(x["raw"] - a["raw"]).max())}
    if "cross_raw" in a:
        d = np.abs(x["raw"] - a["cross_raw"])
        out["raw_max_abs_diff_same_input"] = float(d.max())
        if tag == "detect":  # rows 0-3 box (input px, 320 px input), rows 4.. class scores
            out["raw_box_max_abs_diff_px_same_input"] = float(d[:, :4].max())
            out["raw_score_max_abs_diff_same_input"] = float(d[:, 4:].max())
            rel = d[:, :4] / np.maximum(np.abs(x["raw"][:, :4]), 1.0)
            out["raw_box_max_rel_diff_same_input"] = float(rel.max())
            out["same_input"] = same_input_detections(x, a, images)
    return out


def same_input_detections(x, a, images: Path | None) -> dict:
    """The detections decoded (dkit.edge's decode, the bundle's thresholds) from the x86 raw output and from the
    arm64 model's output on the x86 input tensors: the inference alone, preprocessing taken out. Boxes in image
    pixels (input pixels / the letterbox scale, from the image's size)."""
    from dkit.edge.infer.postprocess import decode_yolo
    from dkit.edge.stream.sources import _decode

    differ, max_box, max_conf = 0, 0.0, 0.0
    for i, name in enumerate(x["names"]):
        r = 1.0
        if images is not None and (images / str(name)).is_file():
            h, w = _decode(images / str(name)).shape[:2]
            r = min(320 / h, 320 / w)
        dx = decode_yolo(x["raw"][i][None], 0.25, 0.7, 300)[0]
        da = decode_yolo(a["cross_raw"][i][None], 0.25, 0.7, 300)[0]
        if len(dx.class_id) != len(da.class_id) or not np.array_equal(dx.class_id, da.class_id):
            differ += 1
            continue
        if len(dx.class_id):
            max_box = max(max_box, float(np.abs(dx.xyxy - da.xyxy).max()) / r)
            max_conf = max(max_conf, float(np.abs(dx.confidence - da.confidence).max()))
    return {"images_with_different_detections": differ, "max_box_diff_px": round(max_box, 4),
            "max_conf_diff": round(max_conf, 6)}


def compare_judge(xd: Path, ad: Path) -> dict:
    x, a = np.load(xd / "judge.npz"), np.load(ad / "judge.npz")
    vx = json.loads((xd / "judge_verdicts.json").read_text())["verdicts"]
    va = json.loads((ad / "judge_verdicts.json").read_text())["verdicts"]
    cos_diff = max(abs(p["cosine"] - q["cosine"]) for p, q in zip(vx, va, strict=True))
    score_diff = max(abs((p["score"] or 0) - (q["score"] or 0)) for p, q in zip(vx, va, strict=True))
    same_verdicts = sum(p["verdict"] == q["verdict"] for p, q in zip(vx, va, strict=True))
    emb_cos = float((x["embeddings"] * a["embeddings"]).sum(1).min())
    new_diff = float(np.abs(x["new_prompt"] - a["new_prompt"]).max())
    new_cos = float(x["new_prompt"] @ a["new_prompt"])
    tokens_same = bool(np.array_equal(x["tokens"], a["tokens"]))
    ok = cos_diff <= COS and new_diff <= COS and tokens_same and same_verdicts == len(vx)
    return {"doodles": int(len(x["names"])), "pairs": len(vx), "max_cosine_diff": cos_diff,
            "max_score_diff": round(score_diff, 2), "same_verdicts": f"{same_verdicts}/{len(vx)}",
            "min_image_embedding_cosine_x86_vs_arm64": emb_cos,
            "image_embedding_max_abs_diff": float(np.abs(x["embeddings"] - a["embeddings"]).max()),
            "new_prompt_tokens_identical": tokens_same, "new_prompt_embedding_max_abs_diff": new_diff,
            "new_prompt_embedding_cosine_x86_vs_arm64": new_cos, "bound": f"cosines within {COS}", "ok": ok}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("x86", type=Path)
    ap.add_argument("arm", type=Path)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--images", type=Path, help="the image folder (for box differences in image pixels)")
    ap.add_argument("--extra", type=Path, help="JSON merged into the report (wall times, wheel resolution)")
    a = ap.parse_args()
    env = {s: json.loads((d / "env.json").read_text()) for s, d in (("x86", a.x86), ("arm64", a.arm))}
    rep = {"x86": {k: v for k, v in env["x86"].items() if k != "packages"},
           "arm64": {k: v for k, v in env["arm64"].items() if k != "packages"},
           "package_versions_differing": {k: [v, env["arm64"]["packages"].get(k)]
                                          for k, v in sorted(env["x86"]["packages"].items())
                                          if k in env["arm64"]["packages"] and env["arm64"]["packages"][k] != v}}
    rep["detect"] = compare_detect(jsonl(a.x86 / "detect.jsonl"), jsonl(a.arm / "detect.jsonl"))
    rep["detect"]["stages"] = stages(a.x86, a.arm, "detect", a.images)
    rep["classify"] = compare_classify(jsonl(a.x86 / "classify.jsonl"), jsonl(a.arm / "classify.jsonl"))
    rep["classify"]["stages"] = stages(a.x86, a.arm, "classify")
    rep["judge"] = compare_judge(a.x86, a.arm)
    if a.extra and a.extra.is_file():
        rep.update(json.loads(a.extra.read_text()))
    rep["ok"] = all(rep[k]["ok"] for k in ("detect", "classify", "judge"))
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(json.dumps(rep, indent=1))
    d, c, j = rep["detect"], rep["classify"], rep["judge"]
    pv = rep["package_versions_differing"]
    lines = [
        f"arm64 parity report ({a.report})",
        f"  x86:   numpy {rep['x86']['numpy']}, onnxruntime {rep['x86']['onnxruntime']}, opencv {rep['x86']['opencv']}",
        f"  arm64: numpy {rep['arm64']['numpy']}, onnxruntime {rep['arm64']['onnxruntime']}, "
        f"opencv {rep['arm64']['opencv']}",
        f"  packages differing: {', '.join(f'{k} {v[0]}/{v[1]}' for k, v in pv.items()) or 'none'}",
        f"  detect:   {d['images']} images, {d['x86_boxes']} boxes, {d['images_with_different_detections']} images "
        f"with different detections, largest box diff {d['max_box_diff_px']} px, conf diff {d['max_conf_diff']} "
        f"-> {'OK' if d['ok'] else 'FAIL'}",
        f"            stages: {json.dumps(d['stages'])}",
        f"  classify: {c['images']} images, top-1 agreement {c['top1_agreement']}, prob diff {c['max_prob_diff']} "
        f"-> {'OK' if c['ok'] else 'FAIL'}",
        f"            stages: {json.dumps(c['stages'])}",
        f"  judge:    {j['pairs']} (doodle, prompt) pairs, max cosine diff {j['max_cosine_diff']:.2e}, verdicts "
        f"{j['same_verdicts']}, new-prompt tokens identical {j['new_prompt_tokens_identical']}, embedding diff "
        f"{j['new_prompt_embedding_max_abs_diff']:.2e} -> {'OK' if j['ok'] else 'FAIL'}",
        f"  overall: {'OK' if rep['ok'] else 'FAIL'}",
    ]
    print("\n".join(lines), flush=True)  # noqa: T201 - a command-line tool's output
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
