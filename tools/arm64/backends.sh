#!/usr/bin/env bash
# `make test-arm64-backends BUNDLE=...`: the backends of issue #14 inside the arm64 root, correctness only
# (emulated timings mean nothing): a detector bundle with int8 and NCNN models (the coco128 recipe's), run with
# dkit run --jsonl as each configuration below, on x86 and in the root, then compared (backend_compare.py):
#   onnxruntime/fp32 (the reference), onnxruntime/int8, ncnn/fp32, ncnn/fp16, openvino/fp32 (where it installs),
#   square letterbox; and onnxruntime/fp32, ncnn/fp32 and ncnn/int8 with the minimal letterbox
#   (BACKEND/PRECISION/LETTERBOX)
# Needs the cached root and venv of `make test-arm64` (tools/arm64/run.sh builds them); pip-installs ncnn and
# openvino (aarch64 wheels from the registry) into that venv once. Report: $DKIT_ARM64_HOME/backends-report.json.
# DKIT_ARM64_DOCTOR=0 leaves out `dkit doctor` in the root (about 8 minutes under qemu); DKIT_ARM64_CONFIGS="B/P/L ..."
# runs only those configurations (the reference onnxruntime/fp32/square, or /minimal, among them);
# DKIT_ARM64_CHECKS=0 leaves out the on-device accuracy check (tools/arm64/device_checks.py, on both sides);
# DKIT_ARM64_CHECK_ONLY="ncnn/int8,onnxruntime/int8" checks only those in the root (emulated fp16 is slow).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
BUNDLE="${1:?usage: backends.sh BUNDLE [IMAGES]}"
N="${2:-${DKIT_ARM64_IMAGES:-8}}"
PINS="${DKIT_ARM64_PINS:-verified}"
V="/opt/dkit-$PINS/bin"
[ -x "$ROOT$V/dkit" ] || die "no arm64 venv at $ROOT$V: run \`make test-arm64\` first"
B="$DKIT_ARM64_HOME/bundles/backends"; D="$DKIT_ARM64_HOME/data/backend-images"; O="$DKIT_ARM64_HOME/out/backends"
rm -rf "$B" "$D" "$O"; mkdir -p "$D" "$O/x86" "$O/arm64"
cp -r "$BUNDLE" "$B"
ls "$DKIT_ARM64_HOME/data/images" | head -n "$N" | while read -r f; do cp "$DKIT_ARM64_HOME/data/images/$f" "$D/"; done
say "bundle $BUNDLE, $(ls "$D" | wc -l) images"
"$REPO/tools/arm64/build_wheel.sh"
"$REPO/tools/arm64/setup_venv.sh"
CONFIGS=(onnxruntime/fp32/square onnxruntime/int8/square ncnn/fp32/square ncnn/fp16/square openvino/fp32/square
         onnxruntime/fp32/minimal ncnn/fp32/minimal ncnn/int8/minimal)
[ -n "${DKIT_ARM64_CONFIGS:-}" ] && read -r -a CONFIGS <<< "$DKIT_ARM64_CONFIGS"  # e.g. "ncnn/int8/minimal ..."
b() { echo "${1%%/*}"; }; p() { local r="${1#*/}"; echo "${r%%/*}"; }; l() { echo "${1##*/}"; }
n() { echo "${1//\//-}"; }
X86_RUN=(env "PYTHONPATH=$DKIT_ARM64_HOME/x86-site" "DKIT_HOME=$O/x86-home" "$X86_PY" -P)
for c in "${CONFIGS[@]}"; do
  "${X86_RUN[@]}" -m dkit run "$B" --source "$D" --jsonl --backend "$(b "$c")" --precision "$(p "$c")" \
    --letterbox "$(l "$c")" > "$O/x86/$(n "$c").jsonl" 2> "$O/x86/$(n "$c").log" || say "x86 $c: failed (see its log)"
done
ensure_binfmt
trap umount_root EXIT
mount_root
say "arm64: pip install ncnn openvino into $V (aarch64 wheels)"
for pkg in ncnn openvino; do  # one at a time: a package without an aarch64 wheel leaves the other installed
  in_root "$V/pip install --quiet --only-binary=:all: $pkg" || say "arm64: $pkg did not install"
done
in_root "$V/pip list --format=freeze" | grep -iE '^(ncnn|openvino|onnxruntime)==' | sed 's/^/  arm64 /'
if [ "${DKIT_ARM64_DOCTOR:-1}" = 1 ]; then  # about 8 minutes under qemu: auto times every candidate
  say "arm64: dkit doctor on the bundle (backend auto; emulated timings mean nothing)"
  in_root "QEMU_CPU=$QEMU_CPU DKIT_HOME=/tmp/dkit-home $V/dkit doctor /dkit/bundles/backends --no-cameras --frames 1 \
    --warmup 0" > "$O/arm64/doctor.txt" 2>&1 || true
  sed 's/^/  arm64 /' "$O/arm64/doctor.txt"
fi
if [ "${DKIT_ARM64_CHECKS:-1}" = 1 ]; then  # the on-device accuracy check of each reduced-precision model
  cp "$REPO/tools/arm64/device_checks.py" "$O/device_checks.py"
  "${X86_RUN[@]}" "$O/device_checks.py" "$B" --out "$O/x86/device-checks.json" > "$O/x86/device-checks.log" 2>&1 \
    || say "x86 device checks: failed (see its log)"
  say "arm64: the on-device accuracy check of each reduced-precision model"
  in_root "QEMU_CPU=$QEMU_CPU DKIT_HOME=/tmp/dkit-home $V/python /dkit/out/backends/device_checks.py \
    /dkit/bundles/backends --out /dkit/out/backends/arm64/device-checks.json --only '${DKIT_ARM64_CHECK_ONLY:-}'" 2>&1 | grep -v '^ *[{}]' \
    | grep "against the export" | sed 's/^/  arm64 /' || say "arm64 device checks: failed"
fi
for c in "${CONFIGS[@]}"; do
  say "arm64: $c"
  in_root "QEMU_CPU=$QEMU_CPU DKIT_HOME=/tmp/dkit-home $V/dkit run /dkit/bundles/backends --source /dkit/data/backend-images \
    --jsonl --backend $(b "$c") --precision $(p "$c") --letterbox $(l "$c") > /dkit/out/backends/arm64/$(n "$c").jsonl \
    2> /dkit/out/backends/arm64/$(n "$c").log" || say "arm64 $c: failed (see its log)"
done
umount_root; trap - EXIT
"$X86_PY" "$REPO/tools/arm64/backend_compare.py" "$O" --report "$DKIT_ARM64_HOME/backends-report.json"
