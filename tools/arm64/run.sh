#!/usr/bin/env bash
# `make test-arm64`: the bundles on a Debian bookworm arm64 root (qemu-user) against x86, same images.
#   1 arm64 root (debootstrap, cached)   2 bundles + images (x86, cached)   3 the project's wheel (x86)
#   4 base-only venv in the root (constraints: DKIT_ARM64_PINS=verified|repo|none)
#   5 x86 side: dkit run --jsonl + probe.py   6 arm64 side: the same in the root   7 compare.py (exit 1 on a bound)
# Everything lands under $DKIT_ARM64_HOME (default ~/.cache/dkit-arm64); report: $DKIT_ARM64_HOME/report.json.
# QEMU_CPU picks the emulated CPU: default cortex-a76 (a Raspberry Pi 5's; a Pi 4 is cortex-a72, "max" is qemu's
# everything-on CPU with SVE/SME, which no Pi has and which emulates slower). DKIT_ARM64_IMAGES: ImageNet photos (20).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
PINS="${DKIT_ARM64_PINS:-verified}"
SUFFIX="${DKIT_ARM64_PATCH:+-patched}"  # DKIT_ARM64_PATCH=FILE.patch: a candidate fix, applied to the wheel only
TAG="arm64-$PINS-$QEMU_CPU$SUFFIX"
T0=$(date +%s)
stamp() { echo "$1=$(( $(date +%s) - T0 ))" >> "$DKIT_ARM64_HOME/out/times-$TAG.txt"; }
mkdir -p "$DKIT_ARM64_HOME/out"; rm -f "$DKIT_ARM64_HOME/out/times-$TAG.txt"

say "1/7 arm64 root";                     "$REPO/tools/arm64/build_root.sh";  stamp root_s
say "2/7 bundles and images (x86)";       "$X86_PY" "$REPO/tools/arm64/make_bundles.py"; stamp bundles_s
say "3/7 the project's wheel (x86)";      "$REPO/tools/arm64/build_wheel.sh"; stamp wheel_s
say "4/7 base-only install in the root";  "$REPO/tools/arm64/setup_venv.sh";  stamp venv_s

B="$DKIT_ARM64_HOME/bundles"; D="$DKIT_ARM64_HOME/data"; X="$DKIT_ARM64_HOME/out/x86$SUFFIX"; A="$DKIT_ARM64_HOME/out/$TAG"
# the wheel built in step 3, like the arm64 side (-P: not the repo folder first on sys.path, so not its sources)
X86_RUN=(env "PYTHONPATH=$DKIT_ARM64_HOME/x86-site" "$X86_PY" -P)
say "5/7 x86 side -> $X"
rm -rf "$X"; mkdir -p "$X"
for k in detect classify; do
  "${X86_RUN[@]}" -m dkit run "$B/$k" --source "$D/images" --jsonl > "$X/$k.jsonl" 2> "$X/$k.log" || die "x86 dkit run $k failed"
done
"${X86_RUN[@]}" "$REPO/tools/arm64/probe.py" --bundles "$B" --images "$D/images" --doodles "$D/doodles" --out "$X" \
  | grep -v ' [0-9]*/[0-9]* ' | sed -u 's/^/  x86 /'
stamp x86_s

say "6/7 arm64 side (qemu${QEMU_CPU:+ -cpu $QEMU_CPU}) -> $A"
rm -rf "$A"; mkdir -p "$A"
ensure_binfmt
say "  through $QEMU_VERSION ($QEMU_BIN)"
trap umount_root EXIT
mount_root
V="/opt/dkit-$PINS/bin"
Q="${QEMU_CPU:+QEMU_CPU=$QEMU_CPU}"
for k in detect classify; do
  in_root "$Q $V/dkit run /dkit/bundles/$k --source /dkit/data/images --jsonl > /dkit/out/$TAG/$k.jsonl \
           2> /dkit/out/$TAG/$k.log" || { tail "$A/$k.log"; die "arm64 dkit run $k failed"; }
done
in_root "$Q $V/python /dkit/tools/probe.py --bundles /dkit/bundles --images /dkit/data/images \
         --doodles /dkit/data/doodles --out /dkit/out/$TAG --ref /dkit/out/x86$SUFFIX" | sed -u 's/^/  arm64 /' \
  || die "arm64 probe failed"
umount_root; trap - EXIT
stamp arm64_s

say "7/7 compare"
"$X86_PY" - "$DKIT_ARM64_HOME" "$PINS" "$TAG" "${QEMU_CPU:-max}" "$QEMU_VERSION" <<'PY'
import json, sys
from pathlib import Path
home, pins, tag, cpu, qemu = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
times = dict(l.split("=") for l in (home / "out" / f"times-{tag}.txt").read_text().split())
resolved = [l for l in (home / f"resolved-{pins}.txt").read_text().split() if "==" in l]
(home / "out" / f"extra-{tag}.json").write_text(json.dumps({
    "constraints": pins, "qemu": qemu, "qemu_cpu": cpu, "cumulative_seconds": {k: int(v) for k, v in times.items()},
    "arm64_pip_resolved": resolved}, indent=1))
PY
REPORT="$DKIT_ARM64_HOME/report.json"
[ "$TAG" = "arm64-verified-cortex-a76" ] || REPORT="$DKIT_ARM64_HOME/report-$TAG.json"
rc=0
"$X86_PY" "$REPO/tools/arm64/compare.py" "$X" "$A" --report "$REPORT" --images "$D/images" --extra "$DKIT_ARM64_HOME/out/extra-$TAG.json" \
  || rc=$?
say "done in $(( $(date +%s) - T0 )) s (report: $REPORT)"
exit $rc
