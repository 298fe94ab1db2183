# Shared settings for the arm64 parity scripts (sourced, not run).
# Everything big lives outside the repo: $DKIT_ARM64_HOME (default ~/.cache/dkit-arm64).
set -euo pipefail
DKIT_ARM64_HOME="${DKIT_ARM64_HOME:-$HOME/.cache/dkit-arm64}"
ROOT="${DKIT_ARM64_ROOT:-$DKIT_ARM64_HOME/root}"
MIRROR="${DKIT_ARM64_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DKIT_ARM64_SUITE:-bookworm}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
X86_PY="${X86_PY:-$REPO/.venv/bin/python}"
mkdir -p "$DKIT_ARM64_HOME"

say() { printf '[arm64 %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

# binfmt: the kernel must run aarch64 ELF files through qemu-user. Bookworm's own qemu-user-static (7.2) runs
# debootstrap and python but segfaults loading onnxruntime's extension module (every onnxruntime wheel tried,
# any -cpu), so the interpreter registered for the parity run is qemu-user 10.0 from bookworm-backports (a Debian
# package, extracted under $DKIT_ARM64_HOME/qemu, not installed), as the binfmt entry "dkit-aarch64" with the F flag
# (opened now, so it works inside the chroot). Newer entries are matched first, so it takes precedence over
# Debian's qemu-aarch64 entry; remove it with: echo -1 > /proc/sys/fs/binfmt_misc/dkit-aarch64
QEMU_SUITE="${DKIT_ARM64_QEMU_SUITE:-bookworm-backports}"
QEMU_DIR="$DKIT_ARM64_HOME/qemu"
QEMU_BIN="$QEMU_DIR/usr/bin/qemu-aarch64"
BINFMT=/proc/sys/fs/binfmt_misc
ensure_qemu() {
  [ -x "$QEMU_BIN" ] && return 0
  say "fetching qemu-user from Debian $QEMU_SUITE (extracted under $QEMU_DIR)"
  local tmp; tmp="$(mktemp -d /tmp/dkit-arm64-apt.XXXXXX)"
  mkdir -p "$tmp/lists/partial"
  echo "deb $MIRROR $QEMU_SUITE main" > "$tmp/sources.list"
  local A=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$tmp/lists")
  apt-get -qq "${A[@]}" update
  (cd "$tmp" && apt-get -qq "${A[@]}" download "qemu-user/$QEMU_SUITE" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  rm -rf "$QEMU_DIR"; mkdir -p "$QEMU_DIR"
  dpkg -x "$tmp"/qemu-user_*.deb "$QEMU_DIR"
  rm -rf "$tmp"
  [ -x "$QEMU_BIN" ] || die "no qemu-aarch64 in the qemu-user package of $QEMU_SUITE"
}
ensure_binfmt() {
  command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null || {
    [ "$(id -u)" = 0 ] || die "needs root (apt-get, debootstrap, chroot)"
    say "installing qemu-user-static debootstrap binfmt-support (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null
  }
  [ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || true
  [ -e "$BINFMT/register" ] || die "no binfmt_misc in this kernel/container: qemu-user cannot run aarch64 binaries"
  [ -e "$BINFMT/qemu-aarch64" ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  ensure_qemu
  if [ -e "$BINFMT/dkit-aarch64" ] && ! grep -q "interpreter $QEMU_BIN\$" "$BINFMT/dkit-aarch64"; then
    echo -1 > "$BINFMT/dkit-aarch64"
  fi
  if [ ! -e "$BINFMT/dkit-aarch64" ]; then
    printf '%s' ':dkit-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU_BIN"':F' \
      > "$BINFMT/register" || die "could not register the dkit-aarch64 binfmt entry (privileged container needed)"
  fi
  grep -q enabled "$BINFMT/dkit-aarch64" || die "binfmt entry dkit-aarch64 is not enabled"
  QEMU_VERSION="$("$QEMU_BIN" --version | head -1)"
}

# Mount /proc, /dev, /sys into the root for the duration of a command; always unmounted after.
mount_root() {
  for d in proc dev dev/pts sys; do mkdir -p "$ROOT/$d"; done
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
  mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
  mountpoint -q "$ROOT/sys" || mount --bind /sys "$ROOT/sys"
  # the bundles, images and the probe script, read-only; the output folder read-write; at /dkit/... in the root
  mkdir -p "$DKIT_ARM64_HOME/out"
  for pair in "bundles:$DKIT_ARM64_HOME/bundles" "data:$DKIT_ARM64_HOME/data" "out:$DKIT_ARM64_HOME/out" \
              "tools:$REPO/tools/arm64"; do
    name="${pair%%:*}"; src="${pair#*:}"
    mkdir -p "$ROOT/dkit/$name" "$src"
    mountpoint -q "$ROOT/dkit/$name" || mount --bind "$src" "$ROOT/dkit/$name"
  done
  # resolv.conf for apt/pip inside the root
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  # the host's CA bundle (a TLS-inspecting proxy's CA lives there), for pip inside the root
  local ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
  [ -f "$ca" ] && cp -L "$ca" "$ROOT/etc/ssl/certs/dkit-host-ca.crt" || true
}
umount_root() {
  for d in dkit/tools dkit/out dkit/data dkit/bundles sys dev/pts dev proc; do
    mountpoint -q "$ROOT/$d" && umount -l "$ROOT/$d" || true
  done
}
HOST_CA=""
[ -f "$ROOT/etc/ssl/certs/dkit-host-ca.crt" ] && HOST_CA=/etc/ssl/certs/dkit-host-ca.crt
in_root() {  # in_root 'shell command'  (run as root inside the arm64 root)
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    ${HOST_CA:+PIP_CERT=$HOST_CA SSL_CERT_FILE=$HOST_CA} /bin/bash -c "$1"
}
