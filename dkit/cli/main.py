"""The `dkit` command line: one subcommand per stage of the pipeline.

    dkit check  KIT                 validate a kit YAML and print it resolved
    dkit fetch  KIT                 put the kit's weights and images into the model store
    dkit label  KIT --data DIR      the teacher labels a folder of images
    dkit train  KIT                 train the student on those labels
    dkit eval   KIT                 measure how much of the teacher the student kept
    dkit export KIT                 write the bundle (ONNX + manifest) for the device
    dkit run    BUNDLE --source S   score camera frames on the device
    dkit serve  BUNDLE              the kiosk web app and leaderboard
    dkit doctor [BUNDLE]            check a device: platform, packages, providers, cameras, disk, the bundle's fps
    dkit service run|serve ...      a systemd unit (and the kiosk's browser autostart) to run at boot
    dkit device-pack --target T     a wheelhouse to install the base runtime on a device, offline
    dkit bench  label|runtime|serve|attack  throughput and attack figures as JSON

Each stage module is imported only when its subcommand runs, so `dkit run` and `dkit serve` work on
a base (edge-only) install. Errors the user can act on print one line and exit with a code from
dkit.core.errors (2 bad kit or arguments, 3 missing model/data file, 4 missing extra).

The commands live in modules grouped by concern, each with a `register(sub, parents)`:
dkit.cli.kit_commands (check, fetch), dkit.cli.stages (label, train, eval, export), dkit.cli.device (run,
serve), dkit.cli.doctor, dkit.cli.service, dkit.cli.device_pack and dkit.cli.bench (bench); dkit.cli.common
holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dkit.cli import bench, device, device_pack, doctor, kit_commands, service, stages
from dkit.cli.common import EPILOG, Parents, kit_arguments
from dkit.cli.run_log import setup_terminal
from dkit.core.errors import DkitError
from dkit.core.version import __version__

log = logging.getLogger("dkit")

# in the order `dkit --help` lists them
COMMAND_MODULES = (kit_commands, stages, device, device_pack, bench, doctor, service)


def main(argv: list[str] | None = None) -> int:
    # Ultralytics pip-installs missing packages at run time unless told not to; the kit never does that.
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_OFFLINE", "true")  # no update checks or telemetry calls from the CLI
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_terminal(args.verbose - args.quiet)
    try:
        return args.handler(args) or 0
    except DkitError as e:
        log.debug("details", exc_info=True)
        sys.stderr.write(f"dkit: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("dkit: interrupted\n")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dkit",
        description="Distill a big zero-shot vision teacher into a small model that runs offline on the edge.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="more log output: the kit's debug lines, and the libraries' own lines "
                                "(Ultralytics, open_clip, warnings) on the terminal too")
    verbosity.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors")
    parser.set_defaults(verbose=0, quiet=0)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    parents = Parents(verbosity=verbosity, kit=kit_arguments())
    for module in COMMAND_MODULES:
        module.register(sub, parents)
    return parser

