"""`dkit doctor [BUNDLE]`: the first command on a new device. What this machine is and whether the edge runtime can
run here (dkit.devtools.doctor does the checks), as a table or JSON, with advice for every problem found.

Runs on a base install: dkit.devtools.doctor is imported inside the handler and imports numpy, onnxruntime and OpenCV
only inside its checks, so a broken one is reported rather than fatal. Exit 0 when no check failed (warnings are
printed with their advice), 1 when one did (`--strict`: warnings too).
"""

from __future__ import annotations

import argparse
import json
import sys

from dkit.cli.common import Command, Parents, arg, register_commands


def cmd_doctor(args: argparse.Namespace) -> int:
    from dkit.devtools.doctor import WARN, diagnose

    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    report = diagnose(args.bundle, cameras=not args.no_cameras, camera_timeout=args.camera_timeout,
                      precision=args.precision, providers=providers, threads=args.threads, backend=args.backend,
                      frames=args.frames, warmup=args.warmup)
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    else:
        sys.stdout.write(report.table())
    failed = not report.ok or (args.strict and report.count(WARN) > 0)
    return 1 if failed else 0


DOCTOR = Command(
    "doctor", "check this device: platform, packages, providers, cameras, disk (and a bundle's speed)",
    "The first command on a new device. Reports the platform (OS, architecture, board: Raspberry Pi model, Jetson "
    "L4T/JetPack), the Python and package versions of the base install (numpy, onnxruntime or onnxruntime-gpu, "
    "OpenCV, the kiosk's web stack), the onnxruntime execution providers that really run a model here (each tried "
    "on a tiny model of its own), the cameras that open and deliver a frame (/dev/video*, a few seconds each at "
    "most), free disk here and under DKIT_HOME, and memory. Given a bundle: whether it verifies, the provider and "
    "precision `dkit run` would use, and its speed on this device (frames/s over synthetic frames of its input "
    "size, after a warm-up). Every problem found comes with advice. Exit 0 when no check failed, 1 when one did "
    "(a bundle that does not verify, a package that does not import, no working provider)."
    "\n\nexamples:\n"
    "  dkit doctor\n"
    "  dkit doctor runs/coco128/bundle --backend ncnn --precision fp16\n"
    "  dkit doctor bundle.tar.gz --json --no-cameras > doctor.json",
    cmd_doctor, arguments=(
        arg("bundle", metavar="BUNDLE", nargs="?", help="a bundle folder or .tar.gz to verify, load and time here"),
        arg("--json", action="store_true", help="print the report as JSON instead of a table"),
        arg("--strict", action="store_true", help="exit 1 on warnings too (a camera missing, low disk, ...)"),
        arg("--no-cameras", action="store_true", help="do not open the cameras (one a running service holds, ...)"),
        arg("--camera-timeout", type=float, default=3.0, metavar="S",
            help="seconds the cameras get, together, to open and deliver a frame (default: %(default)s)"),
        arg("--backend", choices=["auto", "onnxruntime", "openvino", "ncnn"], default="auto",
            help="the backend to load the bundle with, as `dkit run --backend` (default: auto, which times every "
                 "backend x precision here and shows the figures)"),
        arg("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
            help="the bundle model to time, as `dkit run --precision` (default: %(default)s)"),
        arg("--providers", metavar="LIST", help="execution providers for the bundle, as `dkit run --providers` "
            "(default: the best available)"),
        arg("--threads", type=int, metavar="N", help="onnxruntime intra-op threads for the bundle (default: the "
            "bundle's)"),
        arg("--frames", type=int, default=20, metavar="N", help="timed frames (default: %(default)s; at most 15 s)"),
        arg("--warmup", type=int, default=3, metavar="N", help="untimed frames first (default: %(default)s)"),
    ), exits={0: "no check failed", 1: "a check failed (with --strict: or warned)",
              2: "bad arguments (an unknown option or value)", 130: None})


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `doctor` to the `dkit` subcommands."""
    register_commands(sub, parents, (DOCTOR,))
