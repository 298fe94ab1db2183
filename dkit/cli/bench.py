"""`dkit bench label|runtime|serve|attack`: throughput figures, as JSON on stdout.

Each benchmark compares the kit's pipeline with the bare library call in one run. `bench label` needs the
`distill` extra; `bench runtime`, `bench serve` and `bench attack` run on a base install (the Ultralytics
reference in `bench runtime` is measured only when ultralytics is installed). `bench attack` measures the kiosk
server under attack and prints a table (its JSON goes to --json PATH); its goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dkit.cli.common import (
    Command,
    Parents,
    add_command,
    arg,
    edge_errors,
    epilog_for,
    import_stage,
    load,
    log,
    register_commands,
)
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

    from dkit.core.errors import UsageError
    from dkit.devtools.bench import DEFAULT_MAX_SPREAD, BenchError, bench_runtime

    _check_runtime_options(args)
    spread = DEFAULT_MAX_SPREAD if args.max_spread is None else args.max_spread
    reference = None  # the Ultralytics reference needs the distill extra; a base install measures the rest
    if importlib.util.find_spec("ultralytics") is not None:
        from dkit.distill.bench import ultralytics_predictor as reference
    try:
        with edge_errors():
            if args.matrix:
                result = _matrix(args, reference is not None)
            else:
                result = bench_runtime(args.bundle, args.source, images=args.images, repeat=args.repeat,
                                       threads=args.threads, precision=args.precision or "fp32",
                                       reference=reference, max_spread=spread)
                _log_agreement(result)
    except BenchError as e:  # a live source, an empty folder, a setting out of range: nothing measured
        raise UsageError(str(e)) from e
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def _check_runtime_options(args: argparse.Namespace) -> None:
    """UsageError for an option given to the mode it does not apply to (--matrix or the single configuration)."""
    from dkit.core.errors import UsageError

    if args.matrix:
        wrong = [name for name, value in (("--precision", args.precision), ("--max-spread", args.max_spread))
                 if value is not None]
        if wrong:
            raise UsageError(f"dkit bench runtime: {' and '.join(wrong)} apply without --matrix only (--matrix "
                             "runs every precision and reports each row's spread)")
    elif args.backends is not None:
        raise UsageError("dkit bench runtime: --backends applies with --matrix only")


def _log_agreement(result: dict) -> None:
    """On stderr: the rounds' disagreement (the JSON's warning), or that one round cannot show it."""
    if result["warning"]:
        log.warning("dkit bench runtime: %s", result["warning"])
    elif result["rounds_agree"] is None:
        log.info("dkit bench runtime: one round: whether rounds agree is not measured (--repeat 2 or more)")


def _matrix(args: argparse.Namespace, with_ultralytics: bool) -> dict:
    """--matrix: every backend x precision x letterbox, on the photos and on 16:9 crops of them."""
    import os
    import platform

    from dkit.devtools.bench import load_frames
    from dkit.devtools.bench_matrix import bench_matrix, format_table, wide_frames
    from dkit.edge.bundle import open_bundle

    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    photos = load_frames(args.source, args.images)
    out = {"bundle": args.bundle, "images": len(photos), "repeat": args.repeat,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": args.threads or 0}}
    for name, frames in (("photos", photos), ("wide_16x9", wide_frames(photos))):
        reference = None
        if with_ultralytics:
            from dkit.distill.bench import UltralyticsReference

            with open_bundle(args.bundle) as b:
                m = b.manifest
                if m.task in ("detect", "classify"):
                    size = m.preprocess.size
                    reference = UltralyticsReference(b.path(m.model("fp32").file), m.task,
                                                     size[0] if m.task == "classify" else list(size),
                                                     m.thresholds.conf, m.thresholds.iou, m.thresholds.max_det)
                    for _ in range(2):
                        reference.predict(frames[0])
        rows = bench_matrix(args.bundle, frames, repeat=args.repeat, threads=args.threads, backends=backends,
                            reference=reference)
        out[name] = rows
        log.info("%s", format_table(rows, f"{name}: {len(frames)} frames, best of {args.repeat} rounds"))
    return out


def cmd_bench_serve(args: argparse.Namespace) -> int:
    import json

    from dkit.devtools.bench import bench_serve

    try:
        result = bench_serve(args.bundle, submissions=args.submissions, concurrency=args.concurrency,
                             source=args.source, threads=args.threads)
    except RuntimeError as e:  # the server did not come up: its own error says why
        raise DkitError(str(e)) from e
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


def cmd_bench_attack(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from dkit.core.errors import UsageError
    from dkit.devtools.attack_bench import (
        QUICK,
        AttackBenchError,
        AttackSettings,
        bench_attack,
        format_table,
        select_phases,
        unmeasured,
    )

    base = QUICK if args.quick else AttackSettings()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(AttackSettings)
             if getattr(args, f.name) is not None}
    try:
        settings = dataclasses.replace(base, **given)
    except ValueError as e:
        raise UsageError(f"dkit bench attack: {e}") from e

    def progress(message: str) -> None:
        sys.stderr.write(f"bench attack: {message}\n")
        sys.stderr.flush()

    try:
        only = select_phases(args.only)
    except ValueError as e:
        raise UsageError(f"dkit bench attack --only: {e}") from e
    try:
        result = bench_attack(args.bundle, settings, serve_set=args.serve_set, threads=args.threads,
                              progress=progress, only=only, seeds_from=args.climb_seeds_from)
    except AttackBenchError as e:  # not a judge bundle, or the server did not come up: nothing measured
        raise UsageError(str(e)) from e
    sys.stdout.write(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    why = unmeasured(result)
    if why:
        raise DkitError(f"dkit bench attack: could not measure everything: {why}")
    return 0


def _attack_arguments() -> tuple:
    """One option per AttackSettings field, its default and --quick value in the help."""
    from dkit.devtools.attack_bench import QUICK, AttackSettings

    helps = {
        "warmup": "/api/score requests before idle RSS is read",
        "legit_seconds": "seconds the legit client runs alone (the unattacked figure)",
        "legit_interval_ms": "the legit client's pace: a drawing every N ms (0: as fast as it can)",
        "bomb_seconds": "seconds of the image flood (measurement 1)",
        "bomb_clients": "parallel clients of the image flood",
        "idle_sockets": "attacker connections held open (measurement 2)",
        "slowloris_fraction": "share of them that send headers a byte a second (the rest send nothing)",
        "hold_seconds": "seconds the idle sockets are held before /healthz is timed",
        "healthz_requests": "GET /healthz timed (sequential, a new connection each)",
        "flood_seconds": "seconds of the single-client disk flood (measurement 3)",
        "combined_seconds": "seconds of attacks 1-3 together, the legit client measured (measurement 4)",
        "settle_seconds": "seconds between phases, for work still in flight to drain",
        "player_submit_s": "the player's pace in measurements 5-6: a new drawing submitted every N s",
        "player_score_s": "... and a live score asked every N s",
        "scan_bomb_seconds": "seconds of the scan bomb (measurement 5)",
        "scan_bombs": "scan bombs kept in flight from one address",
        "scan_bomb_side": "the scan bomb's width and height in pixels",
        "scan_bomb_repeats": "extra copies of the scan bomb's last scan",
        "slow_seconds": "seconds of the slow readers / trickled uploads / slowloris (measurement 6)",
        "slow_addresses": "attacking addresses of measurement 6 (127.0.0.10 on)",
        "slow_per_client": "connections each of them holds",
        "slow_pipelined": "GET /static/kiosk.js a slow reader pipelines at once",
        "uploads": "concurrent uploads (measurement 7)",
        "upload_addresses": "addresses they come from (127.0.2.1 on)",
        "upload_bytes": "bytes of each uploaded image (a progressive JPEG padded to it)",
        "upload_megapixels": "the uploaded JPEG's megapixels",
        "upload_seconds": "the longest an upload waits for its answer",
        "climb_seeds": "drawings submitted to seed the board before the hill climb (measurement 8)",
        "climb_queries": "the hill climb's budget of /api/score queries",
    }
    def show(value: float) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    out = []
    for f in dataclasses.fields(AttackSettings):
        kind = int if isinstance(f.default, int) else float
        out.append(arg("--" + f.name.replace("_", "-"), type=kind, metavar="N",
                       help=f"{helps[f.name]} (default: {show(f.default)}; --quick: {show(getattr(QUICK, f.name))})"))
    return tuple(out)


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
            "predict on the same ONNX and images (fps_ultralytics). In each round the "
            "runtime and the bare loop alternate frame by frame, so that other load on the "
            "machine hits both alike; Ultralytics then runs the round's frames. Figures are "
            "medians over the rounds, each ratio (runtime_vs_bare, runtime_vs_ultralytics) "
            "the median of its per-round ratios, with those ratios (*_rounds) and their "
            "spread (largest over smallest, *_spread): above --max-spread the rounds "
            "disagree, rounds_agree is false and a warning (in the JSON and on stderr) says "
            "the run is unreliable and by how much. Also p50/p99 latency of the runtime and "
            "of the full pipeline from the folder (decoding included). JSON on stdout; exit "
            "0 whether or not the rounds agree.",
            cmd_bench_runtime, arguments=(
                arg("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz (what `dkit export` writes)"),
                arg("--source", required=True, metavar="DIR",
                    help="folder of images, decoded once, up front (not a camera or stream: every round needs "
                         "the same frames)"),
                arg("--images", type=int, default=64, metavar="N",
                    help="images used from the folder, at most (default: %(default)s)"),
                arg("--repeat", type=int, default=5, metavar="N",
                    help="timed rounds (default: %(default)s; 2 or more to tell whether they agree); with "
                         "--matrix: round-robin rounds over the configurations, the best of each kept"),
                arg("--threads", type=int, metavar="N",
                    help="onnxruntime intra-op threads (default, or 0: onnxruntime's own choice)"),
                arg("--precision", choices=["fp32", "fp16", "int8"],
                    help="which of the bundle's models to time (default: fp32; fp16 and int8 when the bundle "
                         "has them); not with --matrix"),
                arg("--max-spread", type=float, metavar="X",
                    help="the largest per-round ratio over the smallest above which the rounds disagree "
                         "(default: 1.25, dkit.devtools.bench.DEFAULT_MAX_SPREAD; at least 1); not with --matrix"),
                arg("--matrix", action="store_true",
                    help="instead: every backend x precision x letterbox this install and bundle allow, on the "
                         "photos and on 16:9 crops of them, round-robin in one run, each with fps, bare fps, "
                         "p50/p99 and agreement with fp32 onnxruntime; plus Ultralytics' default predict; a "
                         "table on stderr, JSON on stdout"),
                arg("--backends", metavar="LIST", help="with --matrix: only these backends, comma-separated "
                    "(default: every one installed)"),
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
    Command("attack", "the kiosk server under attack: memory, sockets, disk, scan bombs, uploads, hill climb",
            "Starts `dkit serve` on a judge bundle (its own process, a free loopback port, a fresh database) "
            "and measures, in one run, with stdlib clients bound to their own 127.x source addresses: "
            "(1) the server's RSS peak / idle while clients flood both POST routes with thin strips, "
            "lying headers and real decompression bombs (goal < 1.5x); (2) GET /healthz p50/p99 while "
            "hundreds of idle and slowloris sockets are held, and how many of them the server closes (goal "
            "p99 < 100 ms); (3) the growth of the database + WAL + thumbnails during a single-client flood "
            "of distinct valid drawings (goal: within the server's max_disk_mb quota); (4) a paced "
            "legitimate client's successful /api/score per second alone and while attacks 1-3 run at once "
            "(goal: ratio >= 0.5). Then, each on a fresh server, with a player on 127.0.0.1 submitting a drawing "
            "every 6 s and asking a live score every second (headline: the share of its requests answered 200, "
            "and their p99): (5) progressive-JPEG scan bombs kept in flight from one address (goal: share >= "
            "0.9); (6) slow readers, over-length uploads trickling their bodies and slowloris from 16 addresses, "
            "each at the per-client cap (goal: share >= 0.9); (7) 500 concurrent 4 MB uploads of a 36-megapixel "
            "progressive JPEG from 50 addresses: RSS of the server's process tree, peak over idle (goal <= 1.5x); "
            "(8) a blind stroke-by-stroke hill climb on /api/score against a seeded board: queries to rank 1 "
            "(goal: none within --climb-queries). Prints progress on stderr, a table with PASS/FAIL goal lines "
            "on stdout, the figures as JSON with --json. Exit 0 whatever the goals say; 2 when the bundle is "
            "not a judge bundle or a server does not come up; 1 when a server dies during the run. The "
            "defaults take about 7 minutes; --quick a few seconds per measurement; --only picks measurements.",
            cmd_bench_attack, arguments=(
                arg("bundle", metavar="BUNDLE", help="judge bundle folder or .tar.gz"),
                arg("--quick", action="store_true", help="a few seconds per measurement (a smoke run; "
                    "options given explicitly still apply)"),
                arg("--json", metavar="PATH", help="write the figures as JSON to PATH"),
                arg("--only", metavar="LIST", help="only these measurements, comma-separated: rss, healthz, disk, "
                    "legit (1-4, on one server), scan-bomb, slow, uploads, climb (default: all)"),
                arg("--climb-seeds-from", metavar="DIR", help="a folder of drawings (images, or Quick, Draw! .npy "
                    "files) to seed the hill climb's board with (default: the bench's random doodles)"),
                arg("--serve-set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on as `dkit serve --set KEY=VALUE`; repeatable (e.g. max_disk_mb=20)"),
                arg("--threads", type=int, default=1,
                    help="the server's onnxruntime threads (default: %(default)s)"),
                *_attack_arguments(),
            )),
)


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `bench` and its benchmarks (descriptions re-wrapped, each with the exit codes it can give)."""
    (p,) = register_commands(sub, parents, (BENCH,))
    benchmarks = p.add_subparsers(title="benchmarks", metavar="WHAT", required=True)
    for command in BENCHMARKS:
        add_command(benchmarks, command, parents, epilog=epilog_for(command))
