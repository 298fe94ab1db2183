#!/bin/bash
# The offline install test in the arm64 root (after `make test-arm64` built it): a `dkit device-pack --target pi`
# wheelhouse installed with the network cut off (unshare -n: no interface, no DNS), then dkit --version, no torch,
# dkit doctor on the detector bundle, dkit service --print; all on aarch64 under qemu.
#   dkit device-pack --target pi --out /tmp/dkit-pi && sudo tools/arm64/offline_install.sh /tmp/dkit-pi
set -eu
HOME_ARM64=${DKIT_ARM64_HOME:-$HOME/.cache/dkit-arm64}
ROOT=$HOME_ARM64/root
PACK=${1:?usage: offline_install.sh WHEELHOUSE (a dkit device-pack --target pi folder)}
rm -rf "$ROOT/tmp/dkit-pi" "$ROOT/tmp/bundles" "$ROOT/opt/dkit-offline"
cp -r "$PACK" "$ROOT/tmp/dkit-pi"
mkdir -p "$ROOT/tmp/bundles" && cp -r "$HOME_ARM64/bundles/detect" "$ROOT/tmp/bundles/"
for d in proc dev sys; do mkdir -p "$ROOT/$d"; done
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
mountpoint -q "$ROOT/sys" || mount --bind /sys "$ROOT/sys"
trap 'umount -l "$ROOT/sys" "$ROOT/dev" "$ROOT/proc" 2>/dev/null || true' EXIT
B=$(ls -d "$ROOT"/tmp/bundles/detect/* 2>/dev/null | head -1); B=${B#$ROOT}; [ -f "$ROOT$B/manifest.json" ] || B=/tmp/bundles/detect
start=$(date +%s)
unshare -n chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin QEMU_CPU=cortex-a76 LANG=C.UTF-8 \
  /bin/bash -c "set -e
    python3 -c 'import socket
try:
    socket.create_connection((\"pypi.org\", 443), timeout=5); print(\"NETWORK UP\")
except OSError as e:
    print(\"network: none (\", e, \")\")'
    DKIT_VENV=/opt/dkit-offline sh /tmp/dkit-pi/install.sh
    /opt/dkit-offline/bin/dkit --version
    /opt/dkit-offline/bin/python -c 'import importlib.util as u; print(\"torch installed:\", u.find_spec(\"torch\") is not None)'
    /opt/dkit-offline/bin/dkit doctor --no-cameras --frames 5 --warmup 1 $B || echo doctor exit \$?
    /opt/dkit-offline/bin/dkit service serve $B --print 2>/dev/null | grep -E '^(ExecStart|User|Restart)='
  "
echo "wall: $(( $(date +%s) - start )) s"
