"""`dkit bench label|runtime|serve`: throughput figures, as JSON on stdout.

Each benchmark compares the kit's pipeline with the bare library call in one run. `bench label` needs the
`distill` extra; `bench runtime` and `bench serve` run on a base install (the Ultralytics reference in
`bench runtime` is measured only when ultralytics is installed).
"""

from __future__ import annotations

import argparse
import sys

from dkit.cli.common import Command, Parents, add_command, arg, edge_errors, import_stage, load, register_commands
from dkit.core.errors import DkitError


def cmd_bench_label(args: argparse.Namespace) -> int:
    import json

    from dkit.core.store import ModelStore
    bench_label = import_stage("dkit.distill.bench", what="dkit bench label", extra="distill").bench_label

    sys.stdout.write(json.dumps(bench_label(load(args), store=ModelStore(), repeat=args.repeat), indent=2) + "\n")
    return 0


def cmd_bench_runtime(args: argparse.Namespace) -> int:
    import importlib.util
    import json

    from dkit.edge.bench import bench_runtime

    reference = None  # the Ultralytics reference needs the distill extra; a base install measures the rest
    if importlib.util.find_spec("ultralytics") is not None:
        from dkit.distill.bench import ultralytics_predictor as reference
    with edge_errors():
        result = bench_runtime(args.bundle, args.source, images=args.images, repeat=args.repeat,
                               threads=args.threads, precision=args.precision, reference=reference)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    import json

    from dkit.edge.bench import bench_serve

    try:
        result = bench_serve(args.bundle, submissions=args.submissions, concurrency=args.concurrency,
                             source=args.source, threads=args.threads)
    except RuntimeError as e:  # the server did not come up: its own error says why
        raise DkitError(str(e)) from e
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


BENCH = Command("bench", "measure throughput; prints JSON",
                "Benchmarks that compare the kit's pipeline with the bare library call in one run.", None)

BENCHMARKS = (
    Command("label", "labeling images/s vs the bare teacher",
            "Images/s of the whole `dkit label` pipeline (ips_label) against the bare "
            "teacher forward pass on the same images (ips_bare), in one run; JSON on stdout.",
            cmd_bench_label, kit=True, arguments=(
                arg("--repeat", type=int, default=3,
                    help="alternating timed rounds of each, best kept (default: %(default)s)"),
            )),
    Command("runtime", "edge frames/s vs bare onnxruntime and Ultralytics",
            "Frames/s of the edge runtime (pre-processing, session, post-processing) on "
            "real images (fps_runtime), against the bare onnxruntime session.run loop on "
            "the same pre-processed inputs (fps_bare, the limit) and, for detectors and "
            "classifiers when ultralytics is installed, Ultralytics' YOLO(model.onnx)."
            "predict on the same ONNX and images (fps_ultralytics); rounds alternate, the "
            "best of each is kept. Also p50/p99 latency of the runtime and the full "
            "pipeline from the folder (decoding included). JSON on stdout.",
            cmd_bench_runtime, arguments=(
                arg("bundle", metavar="BUNDLE"),
                arg("--source", required=True, metavar="DIR", help="folder of images (decoded once, up front)"),
                arg("--images", type=int, default=64, help="images used from the folder (default: %(default)s)"),
                arg("--repeat", type=int, default=5, help="alternating rounds of each (default: %(default)s)"),
                arg("--threads", type=int, help="onnxruntime intra-op threads (0: its default)"),
                arg("--precision", choices=["fp32", "fp16", "int8"], default="fp32"),
            )),
    Command("serve", "kiosk submissions/s and latency on loopback",
            "Starts `dkit serve` on the bundle (its own process, a fresh database) and "
            "posts --submissions drawings from --concurrency clients with keep-alive "
            "connections on loopback: sustained scored submissions/s (rps), p50/p99 latency "
            "and the server's resident memory before and after. JSON on stdout.",
            cmd_bench_serve, arguments=(
                arg("bundle", metavar="BUNDLE", help="judge bundle folder or .tar.gz"),
                arg("--submissions", type=int, default=10_000, help="submissions in all (default: %(default)s)"),
                arg("--concurrency", type=int, default=8, help="concurrent clients (default: %(default)s)"),
                arg("--source", metavar="DIR", help="folder of drawings to post (default: seeded random-stroke "
                    "doodles)"),
                arg("--threads", type=int, default=1,
                    help="the server's onnxruntime threads (default: %(default)s)"),
            )),
)


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `bench` and its benchmarks (plain argparse help: no epilog, descriptions re-wrapped)."""
    (p,) = register_commands(sub, parents, (BENCH,))
    benchmarks = p.add_subparsers(title="benchmarks", metavar="WHAT", required=True)
    for command in BENCHMARKS:
        add_command(benchmarks, command, parents)
