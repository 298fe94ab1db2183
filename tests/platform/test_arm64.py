"""The bundles on Debian bookworm arm64 (qemu-user) against x86: `make test-arm64` as a slow test.

Needs root, apt-get (qemu-user-static, debootstrap, binfmt-support), a registered qemu-aarch64 binfmt handler and the
package registries; about 12 minutes the first time (the root and the aarch64 wheels are cached under
$DKIT_ARM64_HOME, default ~/.cache/dkit-arm64), about 4 minutes after. Skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ASSETS, ROOT

pytestmark = pytest.mark.slow


def test_bundles_on_arm64_match_x86():
    if os.geteuid() != 0 or not shutil.which("chroot"):
        pytest.skip("needs root (debootstrap, chroot)")
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    if not Path("/proc/sys/fs/binfmt_misc").is_dir():
        pytest.skip("no binfmt_misc in this kernel/container: qemu-user cannot run aarch64 binaries")
    home = Path(os.environ.get("DKIT_ARM64_HOME", Path.home() / ".cache" / "dkit-arm64"))
    proc = subprocess.run(["bash", str(ROOT / "tools/arm64/run.sh")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "X86_PY": sys.executable, "DKIT_ARM64_PINS": "verified"},
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((home / "report.json").read_text())
    assert report["ok"]
    assert report["detect"]["max_box_diff_px"] <= 0.5 and report["detect"]["images_with_different_detections"] == 0
    assert report["classify"]["top1_agreement"] == 1.0
    assert report["judge"]["max_cosine_diff"] <= 1e-4
