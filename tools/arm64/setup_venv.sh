#!/usr/bin/env bash
# The base-only install inside the arm64 root: python3 -m venv /opt/dkit-$PINS, then pip install of the wheel
# built on x86 (no extras), its aarch64 dependencies from the registry under the constraints of
# tools/arm64/constraints.py (PINS=verified|repo|none). Dependencies are installed once per constraints file
# (stamp); the project's wheel is reinstalled every run. Writes what pip resolved to $OUT_DIR/resolved-$PINS.txt.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PINS="${DKIT_ARM64_PINS:-verified}"
VENV="/opt/dkit-$PINS"
WHEELS="$DKIT_ARM64_HOME/wheels"
CONS="$DKIT_ARM64_HOME/constraints-$PINS.txt"
"$X86_PY" "$REPO/tools/arm64/constraints.py" "$PINS" "$CONS" | sed 's/^/  /'
WHEEL="$(ls "$WHEELS"/distill_kit-*.whl)"
mkdir -p "$ROOT/dkit/wheels"
rm -f "$ROOT"/dkit/wheels/*.whl
cp "$WHEEL" "$CONS" "$ROOT/dkit/wheels/"
W="/dkit/wheels/$(basename "$WHEEL")"
C="/dkit/wheels/$(basename "$CONS")"
trap umount_root EXIT
mount_root
HOST_CA=/etc/ssl/certs/dkit-host-ca.crt
sum="$(sha256sum "$CONS" | cut -c1-16)"
t0=$(date +%s)
if [ "$(cat "$ROOT$VENV/.deps-ok" 2>/dev/null)" != "$sum" ]; then
  say "arm64 venv $VENV: python3 -m venv + pip install (base only, constraints: $PINS); aarch64 wheels from the registry"
  in_root "rm -rf $VENV && python3 -m venv $VENV && $VENV/bin/pip install --quiet --prefer-binary --only-binary=:all: -c $C $W && echo $sum > $VENV/.deps-ok" \
    || die "pip install in the arm64 root failed"
  say "arm64 dependencies installed in $(( $(date +%s) - t0 )) s"
else
  say "reusing arm64 venv $VENV (constraints $PINS unchanged); reinstalling the project's wheel only"
  in_root "$VENV/bin/pip install --quiet --no-deps --force-reinstall $W" || die "wheel reinstall failed"
fi
in_root "$VENV/bin/pip list --format=freeze" > "$DKIT_ARM64_HOME/resolved-$PINS.txt"
say "pip resolved in the arm64 root: $(grep -iE '^(numpy|onnxruntime|opencv-python-headless)==' \
  "$DKIT_ARM64_HOME/resolved-$PINS.txt" | tr '\n' ' ')"
