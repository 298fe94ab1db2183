#!/usr/bin/env bash
# Build (or reuse) a Debian bookworm arm64 root under $DKIT_ARM64_HOME/root, run through qemu-user + binfmt.
# Idempotent: a root with the stamp file .dkit-root-ok is reused as is.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_binfmt
STAMP="$ROOT/.dkit-root-ok"
if [ -f "$STAMP" ]; then
  say "reusing arm64 root $ROOT ($(cat "$STAMP"))"
  exit 0
fi
t0=$(date +%s)
if [ ! -f "$ROOT/.dkit-stage1-ok" ]; then
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  say "debootstrap stage 1: $SUITE arm64 from $MIRROR into $ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,libgl1,libglib2.0-0 \
    "$SUITE" "$ROOT" "$MIRROR" > "$DKIT_ARM64_HOME/debootstrap1.log" 2>&1 \
    || { tail -20 "$DKIT_ARM64_HOME/debootstrap1.log"; die "debootstrap stage 1 failed"; }
  touch "$ROOT/.dkit-stage1-ok"
fi
cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/" 2>/dev/null || true   # for binfmt without the F flag
say "debootstrap stage 2 (inside the root, through qemu; the slow part)"
trap umount_root EXIT
mount_root
chroot "$ROOT" /debootstrap/debootstrap --second-stage > "$DKIT_ARM64_HOME/debootstrap2.log" 2>&1 \
  || { tail -20 "$DKIT_ARM64_HOME/debootstrap2.log"; die "debootstrap stage 2 failed"; }
in_root 'uname -m; python3 --version' | sed 's/^/  root: /'
echo "$SUITE arm64, built $(date -u +%FT%TZ) in $(( $(date +%s) - t0 )) s" > "$STAMP"
say "arm64 root ready in $(( $(date +%s) - t0 )) s"
