"""Compare `dkit run --jsonl` outputs of backends x precisions on x86 and arm64 (tools/arm64/backends.sh).

    python tools/arm64/backend_compare.py OUT_DIR [--report report.json]

OUT_DIR holds x86/ and arm64/ with one CONFIG.jsonl per configuration (e.g. ncnn-fp16-square.jsonl). For each
configuration: frames, boxes, and its agreement (boxes of the same class at IoU >= 0.9 over the larger count; the
largest box and confidence difference of matched boxes) with (a) the same configuration on x86 and (b) the
reference onnxruntime-fp32 of the same letterbox on the same platform. Exit 1 when an arm64 configuration that ran
on x86 too did not run at all, when a reference did not run on either platform, or when an fp32 configuration
agrees with x86 less than 0.9. A reduced-precision one (fp16, int8) runs other kernels per CPU family (NCNN int8 on
aarch64 agrees with x86's on 0.88 of the boxes at IoU 0.9): its bound is the on-device accuracy check the runtime
itself applies, arm64/device-checks.json (tools/arm64/device_checks.py: the export guard's metric against the
bundle's fp32 results, at least the guard), and its x86 figure is reported; without that file the 0.9 applies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dkit.edge.infer.postprocess import box_iou  # the x86 venv runs this script, with dkit installed

BOUND = 0.9


def load(path: Path) -> dict[str, list[dict]] | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    frames = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        frames[doc.get("name") or str(doc["frame"])] = doc.get("detections", [])
    return frames


def agree(ref: dict[str, list[dict]], got: dict[str, list[dict]]) -> dict:
    matched = total = 0
    box_diff = conf_diff = 0.0
    for key, want in ref.items():
        have = got.get(key, [])
        total += max(len(want), len(have))
        used = set()
        for w in want:
            best, j = 0.0, -1
            for k, h in enumerate(have):
                if k not in used and h["class"] == w["class"]:
                    v = float(box_iou(np.array([w["box"]]), np.array([h["box"]]))[0, 0])
                    if v > best:
                        best, j = v, k
            if j >= 0 and best >= 0.9:
                used.add(j)
                matched += 1
                box_diff = max(box_diff, float(np.abs(np.array(w["box"]) - np.array(have[j]["box"])).max()))
                conf_diff = max(conf_diff, abs(w["conf"] - have[j]["conf"]))
    return {"frames": len(ref), "boxes": total, "agreement": 1.0 if total == 0 else round(matched / total, 4),
            "max_box_px": round(box_diff, 2), "max_conf": round(conf_diff, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--report", type=Path)
    args = ap.parse_args()
    x86 = {p.stem: load(p) for p in sorted((args.out / "x86").glob("*.jsonl"))}
    arm = {p.stem: load(p) for p in sorted((args.out / "arm64").glob("*.jsonl"))}
    rows, failed = [], False
    checks = _device_checks(args.out / "arm64" / "device-checks.json")
    out = ["| config | platform | frames | boxes | vs same config on x86 | vs onnxruntime fp32 (same letterbox) here "
           "| on-device check |", "|---|---|---|---|---|---|---|"]
    for name in sorted(set(x86) | set(arm)):
        for platform, runs in (("x86", x86), ("arm64", arm)):
            got = runs.get(name)
            if got is None:
                out.append(f"| {name} | {platform} | did not run | | | | |")
                rows.append({"config": name, "platform": platform, "ran": False})
                # the reference must run on both; a configuration that ran on x86 must run on arm64 too
                failed |= name.startswith("onnxruntime-fp32-") or (platform == "arm64" and x86.get(name) is not None)
                continue
            same = agree(x86[name], got) if platform == "arm64" and x86.get(name) else None
            base = name.rsplit("-", 1)[-1]  # the reference of the same letterbox
            ref_name = f"onnxruntime-fp32-{base}"
            ref = agree(runs[ref_name], got) if runs.get(ref_name) else None
            boxes = sum(len(v) for v in got.values())
            backend, precision = name.split("-")[:2]
            check = checks.get(f"{backend}/{precision}") if platform == "arm64" and precision != "fp32" else None
            out.append(f"| {name} | {platform} | {len(got)} | {boxes} | "
                       f"{_fmt(same) if same else '-'} | {_fmt(ref) if ref else '-'} | "
                       f"{_check(check) if check else '-'} |")
            rows.append({"config": name, "platform": platform, "ran": True, "boxes": boxes, "vs_x86": same,
                         "vs_reference": ref, "device_check": check})
            if check is not None:
                failed |= not check["passed"]
            elif same is not None and same["agreement"] < BOUND:
                failed = True
    if args.report:
        args.report.write_text(json.dumps(rows, indent=1))
    out.append(f"overall: {'FAIL' if failed else 'OK'}")
    print("\n".join(out), flush=True)  # noqa: T201 - a command-line tool's output
    return 1 if failed else 0


def _device_checks(path: Path) -> dict[str, dict]:
    """{"ncnn/int8": {"agreement", "passed", "minimum", ...}} from the root's device_checks.py report, or {}."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["checks"]


def _check(c: dict) -> str:
    return f"{c['agreement']:.3f} ({'passes' if c['passed'] else 'FAILS'} {c['minimum']:g}, {c['images']} images)"


def _fmt(a: dict) -> str:
    return f"{a['agreement']:.3f} ({a['boxes']} boxes, max {a['max_box_px']} px, conf {a['max_conf']})"


if __name__ == "__main__":
    sys.exit(main())
