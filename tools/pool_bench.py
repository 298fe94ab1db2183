"""An unlabeled pool against none: the quickdraw judge trained on its labelled drawings alone and with a pool.

    .venv/bin/python tools/pool_bench.py --out /tmp/pool [--drawings 250] [--pool 2500] [--set student.epochs=40]

The quickdraw recipe (datasets/quickdraw/kit.yaml) with its teacher made random (no CLIP weights here:
teacher.pretrained=random; the student still has a real function of the pixels to learn) on the Quick, Draw!
files in ../shared/assets/data/quickdraw. `dkit label` runs once, with `data.unlabeled` set to the same .npy
files: the kit takes `--drawings` doodles a file (20% held out), the pool the next `--pool` a file. Then two
students train from the same seeded init with the same settings, one on the labelled training drawings only
(pool.jsonl removed from its copy of the run), one on those plus the pool (`--pool-epochs`: fewer epochs for it,
each of which sees the pool too); `dkit eval` measures both on the
same held-out drawings. Prints and writes OUT/pool.json: images, held-out cosine and Spearman to the teacher
(and the untrained baseline's), epochs and wall time of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKDRAW = ROOT.parent / "shared" / "assets" / "data" / "quickdraw"


def _dkit(*args: str) -> float:
    """Run `dkit ARGS` as a user would; its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dkit", *args], cwd=ROOT, check=True,
                   env={**os.environ, "DKIT_OFFLINE": "1"})
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the run folders and pool.json")
    ap.add_argument("--drawings", type=int, default=250, help="labelled drawings per .npy file (default 250)")
    ap.add_argument("--pool", type=int, default=2500, help="pool drawings per .npy file (default 2500)")
    ap.add_argument("--set", action="append", default=[], help="more kit overrides, e.g. student.epochs=20")
    ap.add_argument("--pool-epochs", type=int, default=None,
                    help="student.epochs for the run with the pool (default: the kit's; each of its epochs sees "
                         "11x the images)")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    kit = str(ROOT / "datasets" / "quickdraw" / "kit.yaml")
    sets = [f"data.drawings_per_file={args.drawings}", f"data.unlabeled=[{QUICKDRAW}]",
            f"data.unlabeled_per_file={args.pool}", "teacher.pretrained=random", *args.set]
    flags = ["--data", str(QUICKDRAW), *[a for s in sets for a in ("--set", s)]]
    labelled = out / "labelled"
    label_s = _dkit("label", kit, *flags, "--out", str(labelled))
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "settings": sets, "label_seconds": round(label_s, 1), "runs": {}}
    for name in ("labelled only", "with pool"):
        run = out / name.replace(" ", "-")
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(labelled, run, symlinks=True, ignore=shutil.ignore_patterns("student", "eval.*"))
        if name == "labelled only":
            (run / "labels" / "pool.jsonl").unlink()
        extra = ["--set", f"student.epochs={args.pool_epochs}"] if name == "with pool" and args.pool_epochs else []
        train_s = _dkit("train", kit, *flags, *extra, "--out", str(run), "-q")
        _dkit("eval", kit, *flags, *extra, "--out", str(run))
        student = json.loads((run / "student" / "student.json").read_text())
        ev = json.loads((run / "eval.json").read_text())
        report["runs"][name] = {
            "images": student["images"], "epochs": student["epochs_run"], "best_epoch": student["best_epoch"],
            "train_seconds": round(train_s, 1), "cosine": ev["student"]["cosine_mean"],
            "spearman": ev["student"]["spearman_mean"], "top1": ev["student"]["top1_agreement"],
            "baseline_cosine": ev["baseline"]["cosine_mean"], "baseline_spearman": ev["baseline"]["spearman_mean"]}
    (out / "pool.json").write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
