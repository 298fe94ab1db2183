"""`dkit device-pack`: the offline installer for a device, made on a machine with a network.

    dkit device-pack --target pi --out dkit-pi          # Raspberry Pi OS Bookworm: CPython 3.11, aarch64, with NCNN
    dkit device-pack --target pi --extra none --out dkit-pi   # the base install only (onnxruntime)
    dkit device-pack --target jetson --out dkit-jetson  # JetPack 6: CPython 3.10, aarch64 (CPU onnxruntime)
    dkit device-pack --target linux_aarch64 --python 3.12 --out DIR
    dkit device-pack --check                            # every base dependency has wheels for 3.10-3.13?

The work is dkit.release.wheelhouse's; this module parses the arguments and prints progress (stderr) and the check's
table (stdout). docs/DEVICE.md is the guide.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dkit.cli.common import Command, Parents, arg, register_commands
from dkit.core.errors import UsageError


def cmd_device_pack(args: argparse.Namespace) -> int:
    from dkit.release import wheelhouse as wh

    def progress(line: str) -> None:
        if args.quiet == 0:
            sys.stderr.write(f"dkit: {line}\n")
            sys.stderr.flush()

    source = Path(args.source) if args.source else None
    if args.check:
        pythons = tuple(args.python.split(",")) if args.python else wh.PYTHONS
        check = wh.check_wheels(pythons=pythons, source=source, progress=progress)
        sys.stdout.write(f"base dependencies: {', '.join(check.requirements)}\n"
                         f"pinned (constraints.txt): {', '.join(check.constraints) or 'none'}\n"
                         f"platforms: manylinux2014 .. manylinux_2_{wh.CHECK_GLIBC[1]} "
                         f"(glibc >= 2.{wh.CHECK_GLIBC[1]}), wheels only\n\n")
        sys.stdout.write(wh.format_table(check.rows, check.requirements))
        return 0 if check.ok else 1
    if not args.out:
        raise UsageError("device-pack: --out DIR is required (or --check)")
    target = wh.target_for(args.target, args.python)
    progress(f"target {target.name}: {target.about}; wheels for CPython {target.python} {target.platform}")
    if target.note:
        progress(f"note: {target.note}")
    # --extra replaces the target's own extras (pi: ncnn); --extra none packs the base install only
    extras = list(target.extras) if args.extra is None else [
        e.strip() for e in args.extra.split(",") if e.strip() and e.strip().lower() != "none"]
    if extras:
        progress(f"extras: {', '.join(extras)}" + (" (the target's; --extra none for the base install only)"
                                                   if args.extra is None else ""))
    wh.build_wheelhouse(target, Path(args.out), source=source, strict=args.strict, progress=progress, extras=extras)
    return 0


DEVICE_PACK = Command(
    "device-pack", "write an offline installer (a wheelhouse) for a device",
    "Write a folder with the distill-kit wheel, a wheel of every base dependency for the device's platform and "
    "Python (pinned by constraints.txt where it pins one), the target's device backends (pi: NCNN, the fastest "
    "there; --extra to choose), requirements.txt with their sha256 and install.sh. "
    "Copy it to the device and run `sh install.sh`: it installs into ~/dkit with no network "
    "(pip install --no-index --find-links). Needs pip and the package registry here, and a source checkout.\n\n"
    "targets: pi (Raspberry Pi OS Bookworm: CPython 3.11, aarch64), jetson (JetPack 6: CPython 3.10, aarch64, "
    "CPU onnxruntime), linux_aarch64, linux_x86_64 (alias x86_64; CPython 3.11 unless --python).\n"
    "--check resolves the base dependencies for CPython 3.10-3.13 on manylinux aarch64 and x86_64 and prints a "
    "table (exit 1 if one has no wheel); nothing is kept.",
    cmd_device_pack,
    arguments=(
        arg("--target", default="pi", metavar="NAME",
            help="pi, jetson, linux_aarch64, linux_x86_64 / x86_64 (default: pi)"),
        arg("--python", metavar="X.Y", help="the device's Python (default: the target's); with --check, a "
                                              "comma-separated list (default: 3.10,3.11,3.12,3.13)"),
        arg("--out", metavar="DIR", help="the wheelhouse folder to write (replaced whole when complete)"),
        arg("--source", metavar="DIR", help="the distill-kit source checkout (default: the one dkit runs from)"),
        arg("--strict", action="store_true",
            help="fail when a pin of constraints.txt has no wheel for the target, instead of packing the newest "
                 "version that has one"),
        arg("--check", action="store_true", help="only check that every base dependency has wheels (see above)"),
        arg("--extra", metavar="LIST", help="also pack these extras' wheels, comma-separated: the device backends "
            "ncnn (fastest on a Raspberry Pi) and openvino, e.g. --extra ncnn,openvino; 'none' for the base "
            "install only (default: the target's: ncnn for pi, none for the others)"),
    ),
    exits={0: None, 1: "a pack failed (no wheel for a package, a build that failed) or --check found a package "
                       "without wheels", 2: "bad arguments (an unknown target, extra or option, no --out, a folder "
                                            "that is not a wheelhouse)", 130: None},
    environment="",
)


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `device-pack` to the `dkit` subcommands."""
    register_commands(sub, parents, (DEVICE_PACK,))
