#!/usr/bin/env bash
# Where an arm64/x86 detector difference comes from, on the first N images (default 4) of the parity set:
# the model alone on the *x86* input tensors (probe.py --ref), per constraints mode x emulated CPU.
#   tools/arm64/diagnose.sh [N] [PINS...]     env: CPUS="cortex-a76 max"
# Needs a finished x86 side (tools/arm64/run.sh step 5). Venvs are made as in setup_venv.sh (cached).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
N="${1:-4}"; shift || true
PINS_LIST=("${@:-verified none}")
read -r -a PINS_LIST <<< "${PINS_LIST[*]}"
CPUS="${CPUS:-cortex-a76 max}"
X="$DKIT_ARM64_HOME/out/x86"
[ -f "$X/detect.npz" ] || die "no x86 side at $X: run tools/arm64/run.sh first"
ensure_binfmt
for pins in "${PINS_LIST[@]}"; do
  DKIT_ARM64_PINS="$pins" "$REPO/tools/arm64/setup_venv.sh"
done
trap umount_root EXIT
mount_root
for pins in "${PINS_LIST[@]}"; do
  for cpu in $CPUS; do
    out="diag-$pins-$cpu"; rm -rf "$DKIT_ARM64_HOME/out/$out"
    say "diagnose: constraints $pins, -cpu $cpu, $N images"
    in_root "QEMU_CPU=$cpu /opt/dkit-$pins/bin/python /dkit/tools/probe.py --only detect --limit $N \
             --bundles /dkit/bundles --images /dkit/data/images --doodles /dkit/data/doodles --out /dkit/out/$out \
             --ref /dkit/out/x86" | grep -v ' [0-9]*/[0-9]* ' | sed 's/^/  /'
  done
done
umount_root; trap - EXIT
"$X86_PY" - "$DKIT_ARM64_HOME/out" "$N" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from dkit.edge.infer.postprocess import decode_yolo
out, n = Path(sys.argv[1]), int(sys.argv[2])
x = np.load(out / "x86" / "detect.npz")
rows = {}
for d in sorted(out.glob("diag-*")):
    a = np.load(d / "detect.npz")
    env = json.loads((d / "env.json").read_text())
    ref, got = x["raw"][:n], a["cross_raw"]
    diff = np.abs(ref - got)
    dx = decode_yolo(ref, 0.25, 0.7, 300)
    da = decode_yolo(got, 0.25, 0.7, 300)
    counts = [(len(p.confidence), len(q.confidence)) for p, q in zip(dx, da)]
    rows[d.name] = {"onnxruntime": env["onnxruntime"], "hwcaps": env["hwcaps"],
                    "tensors_identical": int(sum(np.array_equal(p, q) for p, q in zip(x["tensors"][:n], a["tensors"]))),
                    "raw_box_max_abs_diff_px": float(diff[:, :4].max()), "raw_score_max_abs_diff": float(diff[:, 4:].max()),
                    "detections_x86_vs_arm64": counts}
    print(f"{d.name:32s} ort {env['onnxruntime']:7s} same-input raw diff: boxes {diff[:, :4].max():.2e} px, "
          f"scores {diff[:, 4:].max():.2e}; detections x86/arm64 {counts}  [{env['hwcaps']}]")
(out.parent / "diagnose.json").write_text(json.dumps(rows, indent=1))
PY
