"""The on-device accuracy check (dkit.edge.infer.device_check) of every reduced-precision model of a bundle, here.

    python device_checks.py BUNDLE [--out FILE.json] [--only ncnn/int8,onnxruntime/int8]

Run by tools/arm64/backends.sh inside the arm64 root (and on x86 beside it): for each backend x precision the
bundle and this install can run, except fp32, its agreement with the fp32 results the export shipped in checks/,
whether the guard passes, and what `needs_check` says (whether auto would check it on this machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--out", help="also write the JSON report here")
    ap.add_argument("--only", default="", help="comma-separated backend/precision pairs to check (default: all)")
    args = ap.parse_args(argv)
    from dkit.edge.bundle import open_bundle
    from dkit.edge.infer.backends import BACKENDS
    from dkit.edge.infer.device_check import check, needs_check
    from dkit.edge.infer.select import candidates

    report = {"machine": platform.machine(), "checks": {}}
    with open_bundle(args.bundle) as b:
        report["reference_machine"] = b.manifest.checks.machine if b.manifest.checks else None
        for backend, precision in candidates(b.manifest):
            if precision == "fp32" or args.only and f"{backend}/{precision}" not in args.only.split(","):
                continue
            t = time.perf_counter()
            out = check(b, backend, precision)
            report["checks"][f"{backend}/{precision}"] = {
                "agreement": out.agreement, "passed": out.passed, "minimum": out.minimum, "images": out.images,
                "auto_checks_here": needs_check(b.manifest.model(precision, BACKENDS[backend].format)),
                "seconds": round(time.perf_counter() - t, 1)}
            print(f"{backend}/{precision}: {out.describe()}", flush=True)  # noqa: T201 - a tool's output
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
