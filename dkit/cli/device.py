"""`dkit run` and `dkit serve`: the commands that run a bundle on the device.

They use only the edge runtime (dkit.edge: numpy, onnxruntime, OpenCV; uvicorn for the kiosk), imported
inside the handlers, so they work on a base install without torch. The edge's own errors become the CLI's
exit codes through `edge_errors`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dkit.cli.common import Command, Parents, arg, edge_errors, log, register_commands
from dkit.core.errors import DkitError, UsageError


def cmd_run(args: argparse.Namespace) -> int:
    import json

    with edge_errors():
        from dkit.edge.pipeline import JsonlSink, Pipeline, VideoSink, WindowSink, check_window
        from dkit.edge.runtime import Runtime
        from dkit.edge.sources import open_source

        if args.show:
            check_window()  # no display: the error now, not after loading the model (nor an abort later)
        providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
        runtime = Runtime.load(args.bundle, backend=args.backend, providers=providers, threads=args.threads,
                               precision=args.precision, letterbox=args.letterbox, conf=args.conf, iou=args.iou,
                               remeasure=args.remeasure)
        log.info("running %s with %s on %s", runtime.model_file.name, runtime.choice.describe(), runtime.provider)
        with runtime:
            max_fps = args.max_fps if args.max_fps is not None else float(
                runtime.manifest.runtime.max_fps)
            sinks = []  # checked before any capture thread starts
            if args.jsonl:
                sinks.append(JsonlSink(sys.stdout, runtime))
            if args.save:
                sinks.append(VideoSink(args.save, runtime, fps=max_fps or 15.0))
            window = WindowSink(runtime) if args.show else None  # before any capture starts
            sources = []
            try:
                for spec in args.source:
                    sources.append(open_source(spec, stall_timeout=args.stall_timeout, open_tries=args.open_tries))
                pipeline = Pipeline(runtime, sources, sinks, max_fps=max_fps, max_frames=args.max_frames)
                if window is not None:
                    window.on_quit = pipeline.stop
                    pipeline.sinks.append(window)
                pipeline.install_signal_handlers()
                stats = pipeline.run()
            finally:
                for source in sources:  # capture threads end before the interpreter does
                    source.close()
    sys.stderr.write("dkit: stats " + json.dumps(stats) + "\n")
    if not stats["frames"] and not stats["stopped"]:
        raise DkitError(_no_frames(stats, sources))
    return 0


def _no_frames(stats: dict, sources: list) -> str:
    """Why a run that was not stopped scored nothing: a zero-frame run is a failed run, never exit 0."""
    errors = "; ".join(f"{s.spec}: {s.stats.last_error}" for s in sources if s.stats.last_error)
    return (f"no frame was scored: {stats['read']} read, {stats['corrupt']} unreadable or corrupt"
            + (f" ({errors})" if errors else ""))


def cmd_serve(args: argparse.Namespace) -> int:
    with edge_errors():
        from dkit.edge.kiosk.serving import serve
        from dkit.edge.server import create_app

        bundle = Path(args.bundle)
        db = Path(args.db) if args.db else bundle.resolve().parent / "kiosk" / "kiosk.sqlite"
        token = admin_token(args)
        try:
            app = create_app(bundle, db=db, admin_token=token, max_upload=int(args.max_upload_mb * (1 << 20)),
                             threads=args.threads, docs=args.docs, settings=args.set or ())
        except ValueError as e:  # a bad --set, or the bundle's kiosk settings
            raise UsageError(str(e)) from e
    cfg = app.state.kiosk.cfg
    log.info("kiosk on http://%s:%d (database %s; admin %s; limits: %s)", args.host, args.port, db,
             f"on at http://{args.host}:{args.port}/admin" if token else "off", _limits(cfg))
    serve(app, host=args.host, port=args.port, cfg=cfg)
    return 0


def admin_token(args: argparse.Namespace) -> str | None:
    """The operator's token: --admin-token-file, else $DKIT_ADMIN_TOKEN, else --admin-token (which any user of
    this machine can read in the process list: warned about). None: admin off."""
    import os

    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--admin-token-file {args.admin_token_file}: cannot read it ({e})") from e
        if not token:
            raise UsageError(f"--admin-token-file {args.admin_token_file}: the file is empty")
        return token
    if args.admin_token:
        log.warning("the admin token on the command line is visible to every user of this machine (ps); use "
                    "DKIT_ADMIN_TOKEN or --admin-token-file instead")
        return args.admin_token
    return os.environ.get("DKIT_ADMIN_TOKEN") or None


def _tries(text: str) -> int:
    """--open-tries: an int >= 0 (anything else is argparse's usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of tries >= 0 (0: keep trying), got {text!r}")
    return value


def _limits(cfg) -> str:
    return (f"score {cfg.score_rate:g}/s burst {cfg.score_burst:g}, submit {cfg.submit_rate:g}/s burst "
            f"{cfg.submit_burst:g} per client; {cfg.workers} scoring + {cfg.queue} waiting; disk {cfg.max_disk_mb:g} "
            f"MB; keep top {cfg.keep_top}/prompt + last {cfg.keep_last}")


RUN = Command(
    "run", "score camera frames with a bundle (on the device)",
    "Run a bundle on frames from cameras, streams, videos, folders or images: the edge runtime "
    "(numpy + onnxruntime + OpenCV, no torch). Live sources keep only their newest frame, so latency "
    "never grows; a dropped camera or stream reconnects with backoff and the run goes on (one that never "
    "gives a frame fails the run after --open-tries tries). Ctrl-C (or SIGTERM) stops it cleanly; a final "
    "stats line goes to stderr: frames, fps, latency (capture -> result: p50_ms/p95_ms/p99_ms) split into "
    "wait_p50_ms/wait_p95_ms (before processing: a folder's frames queue) and infer_p50_ms/infer_p95_ms "
    "(pre-processing + model + post-processing), dropped frames, reconnects. A run that scores no frame "
    "fails (exit 1).\n\nexamples:\n"
    "  dkit run runs/coco128/bundle --source 0 --jsonl\n"
    "  dkit run bundle.tar.gz --source rtsp://cam/stream --source rtsp://cam2/stream --save out.mp4\n"
    "  dkit run runs/coco128/bundle --source ../shared/assets/data/coco128/images/train2017 --jsonl",
    cmd_run, arguments=(
        arg("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz"),
        arg("--source", required=True, action="append", metavar="SRC",
            help="camera index, video file, rtsp:// or http:// URL, image folder or image; repeat it for "
                 "several cameras (scored together in one batch when the model allows)"),
        arg("--jsonl", action="store_true", help="print one JSON line per frame on stdout"),
        arg("--show", action="store_true", help="show the annotated frames in a window (q quits)"),
        arg("--save", metavar="PATH", help="write the annotated frames to a video file (.mp4, .avi, ...)"),
        arg("--max-fps", type=float, metavar="N", help="at most N rounds per second (default: the bundle's "
            "runtime.max_fps; 0 = as fast as frames come)"),
        arg("--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0: no limit)"),
        arg("--providers", metavar="LIST", help="onnxruntime's execution providers in order, comma-separated, "
            "e.g. cuda,cpu (default: the best available: tensorrt > cuda > openvino > coreml > cpu); giving them "
            "means the onnxruntime backend"),
        arg("--backend", choices=["auto", "onnxruntime", "openvino", "ncnn"], default="auto",
            help="inference library: auto (default) times the bundle's models on every backend installed here "
                 "once, keeps the fastest (cached per device in $DKIT_HOME/choices.json) and logs the figures; "
                 "openvino and ncnn need `pip install 'distill-kit[openvino]'` / `[ncnn]`, and ncnn a bundle "
                 "exported with export.backends: [onnx, ncnn]"),
        arg("--threads", type=int, metavar="N", help="the backend's threads (0: its default)"),
        arg("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
            help="which of the bundle's models to run: auto (default) the fastest here of those that passed the "
                 "export's accuracy guard (int8 is not always faster: it needs int8 dot products in the CPU)"),
        arg("--remeasure", action="store_true",
            help="--backend/--precision auto: time the candidates again instead of using the choice cached for "
                 "this device (after a firmware or cooling change, or a choice made while the device was busy)"),
        arg("--letterbox", choices=["minimal", "square"],
            help="detectors: minimal pads each frame only to a multiple of the stride (a 16:9 frame at 320 is "
                 "fed as 320x192), square to the full input size (default: the bundle's; square on a backend "
                 "that takes one input shape)"),
        arg("--conf", type=float, help="detection/classification confidence threshold (default: the bundle's)"),
        arg("--iou", type=float, help="NMS IoU threshold (default: the bundle's)"),
        arg("--stall-timeout", type=float, default=5.0, metavar="S",
            help="seconds without a frame before a live source is reconnected (default: %(default)s)"),
        arg("--open-tries", type=_tries, default=3, metavar="N",
            help="tries a camera or stream that has never given a frame gets before the run fails naming it "
                 "(default: %(default)s; 0: keep trying); one that has worked reconnects forever"),
    ))

SERVE = Command(
    "serve", "serve the kiosk web app and leaderboard",
    "Serve the kiosk judge from a judge bundle (a clip-embed student): a drawing canvas and camera "
    "page at /, the scoring API (its schema at /openapi.json; the interactive /docs with --docs) and the "
    "leaderboard. Submissions go to SQLite "
    "(WAL) and thumbnails to disk, durably: a crash loses no acknowledged submission. The operator page "
    "(/admin: prompt, rounds, moderation, bans, stats, export) needs the token given here; without one it is off. "
    "Every resource is bounded for a hostile public: per-client rates (429), a work queue (503), "
    "near-duplicates refused (409), a disk quota with retention, connection caps and timeouts."
    "\n\nexamples:\n"
    "  openssl rand -hex 16 > ~/.dkit-token && chmod 600 ~/.dkit-token\n"
    "  dkit serve runs/quickdraw/bundle --host 0.0.0.0 --admin-token-file ~/.dkit-token\n"
    "  dkit serve runs/quickdraw/bundle --set submit_rate=0.5 --set max_disk_mb=200\n"
    "  curl -F image=@drawing.png -F name=ada http://127.0.0.1:8000/api/submissions",
    cmd_serve, arguments=(
        arg("bundle", metavar="BUNDLE", help="judge bundle folder or .tar.gz"),
        arg("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for "
            "other machines)"),
        arg("--port", type=int, default=8000, help="port (default: %(default)s)"),
        arg("--db", metavar="PATH", help="SQLite database for submissions and prompts (default: "
            "kiosk/kiosk.sqlite beside the bundle); thumbnails go to a thumbs/ folder beside it"),
        arg("--admin-token-file", metavar="FILE", help="file holding the operator's token for /admin and the admin "
            "routes (or set DKIT_ADMIN_TOKEN; neither: admin off, there is no default token)"),
        arg("--admin-token", metavar="TOKEN", help="the token itself (visible in `ps` to every user: prefer the "
            "file or the variable)"),
        arg("--set", action="append", metavar="KEY=VALUE", help="override one of the bundle's kiosk limits, e.g. "
            "submit_rate=0.5, submit_burst=5, score_rate=2, workers=2, queue=8, dup_bits=6 (-1: off), keep_top=100, "
            "keep_last=1000, max_disk_mb=512, header_timeout=10, body_timeout=30, max_connections=512, "
            "max_connections_per_client=32, blocklist=FILE; repeat it for several"),
        arg("--max-upload-mb", type=float, default=4.0, help="largest accepted image (default: %(default)s)"),
        arg("--threads", type=int, default=1, help="onnxruntime threads per request (default: %(default)s: "
            "requests run in parallel instead)"),
        arg("--docs", action="store_true", help="also serve the interactive API docs at /docs and /redoc (off by "
            "default: a kiosk faces the public)"),
    ))


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `run` and `serve` to the `dkit` subcommands."""
    register_commands(sub, parents, (RUN, SERVE))
