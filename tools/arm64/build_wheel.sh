#!/usr/bin/env bash
# The project's wheel, built on x86 (`pip wheel --no-deps`), from a clean copy of the working tree (tracked and
# untracked-but-not-ignored files), so no stale build/ folder of the repo can leak into it.
# Output: $DKIT_ARM64_HOME/wheels/distill_kit-*.whl (rebuilt every run: it is seconds).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
WHEELS="$DKIT_ARM64_HOME/wheels"
SRC="$(mktemp -d /tmp/dkit-arm64-src.XXXXXX)"
trap 'rm -rf "$SRC"' EXIT
(cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents -- {} "$SRC"/ 2>/dev/null || true)
if [ -n "${DKIT_ARM64_PATCH:-}" ]; then  # an experiment: a candidate fix applied to the copy only, never the repo
  say "applying $DKIT_ARM64_PATCH to the wheel's source copy"
  patch -s -p1 -d "$SRC" < "$DKIT_ARM64_PATCH" || die "patch $DKIT_ARM64_PATCH does not apply"
fi
rm -rf "$WHEELS"; mkdir -p "$WHEELS"
"$X86_PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$WHEELS" "$SRC" \
  >/dev/null
# the x86 side runs this same wheel (no deps: those come from the x86 venv), not the repo's editable install
rm -rf "$DKIT_ARM64_HOME/x86-site"
"$X86_PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile --target "$DKIT_ARM64_HOME/x86-site" \
  "$WHEELS"/distill_kit-*.whl
say "wheel: $(ls "$WHEELS")${DKIT_ARM64_PATCH:+ (patched: $DKIT_ARM64_PATCH)}; x86 side: $DKIT_ARM64_HOME/x86-site"
