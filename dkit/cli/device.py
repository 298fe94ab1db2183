"""`dkit run` and `dkit serve`: the commands that run a bundle on the device.

They use only the edge runtime (dkit.edge: numpy, onnxruntime, OpenCV; uvicorn for the kiosk), imported
inside the handlers, so they work on a base install without torch. The edge's own errors become the CLI's
exit codes through `edge_errors`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dkit.cli.common import Command, FromEnv, Parents, arg, edge_errors, log, register_commands


def cmd_run(args: argparse.Namespace) -> int:
    import json

    with edge_errors():
        from dkit.edge.pipeline import JsonlSink, Pipeline, VideoSink, WindowSink
        from dkit.edge.runtime import Runtime
        from dkit.edge.sources import open_source

        providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
        runtime = Runtime.load(args.bundle, providers=providers, threads=args.threads, precision=args.precision,
                               conf=args.conf, iou=args.iou)
        with runtime:
            max_fps = args.max_fps if args.max_fps is not None else float(
                runtime.manifest.runtime.max_fps)
            sinks = []  # checked before any capture thread starts
            if args.jsonl:
                sinks.append(JsonlSink(sys.stdout, runtime))
            if args.save:
                sinks.append(VideoSink(args.save, runtime, fps=max_fps or 15.0))
            sources = []
            try:
                for spec in args.source:
                    sources.append(open_source(spec, stall_timeout=args.stall_timeout))
                pipeline = Pipeline(runtime, sources, sinks, max_fps=max_fps, max_frames=args.max_frames)
                if args.show:
                    pipeline.sinks.append(WindowSink(runtime, on_quit=pipeline.stop))
                pipeline.install_signal_handlers()
                stats = pipeline.run()
            finally:
                for source in sources:  # capture threads end before the interpreter does
                    source.close()
    sys.stderr.write("dkit: stats " + json.dumps(stats) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    with edge_errors():
        import uvicorn

        from dkit.edge.server import create_app

        bundle = Path(args.bundle)
        db = Path(args.db) if args.db else bundle.resolve().parent / "kiosk" / "kiosk.sqlite"
        app = create_app(bundle, db=db, admin_token=args.admin_token, max_upload=int(args.max_upload_mb * (1 << 20)),
                         threads=args.threads, docs=args.docs)
    log.info("kiosk on http://%s:%d (database %s; admin routes %s)", args.host, args.port, db,
             "on" if args.admin_token else "off")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


RUN = Command(
    "run", "score camera frames with a bundle (on the device)",
    "Run a bundle on frames from cameras, streams, videos, folders or images: the edge runtime "
    "(numpy + onnxruntime + OpenCV, no torch). Live sources keep only their newest frame, so latency "
    "never grows; a dropped camera or stream reconnects with backoff and the run goes on. Ctrl-C (or "
    "SIGTERM) stops it cleanly; a final stats line (frames, fps, p50/p99 latency, dropped frames, "
    "reconnects) goes to stderr.\n\nexamples:\n"
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
        arg("--providers", metavar="LIST", help="execution providers in order, comma-separated, e.g. "
            "cuda,cpu (default: the best available: tensorrt > cuda > openvino > coreml > cpu)"),
        arg("--threads", type=int, metavar="N", help="onnxruntime intra-op threads (0: its default)"),
        arg("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
            help="which of the bundle's models to run (default: %(default)s)"),
        arg("--conf", type=float, help="detection/classification confidence threshold (default: the bundle's)"),
        arg("--iou", type=float, help="NMS IoU threshold (default: the bundle's)"),
        arg("--stall-timeout", type=float, default=5.0, metavar="S",
            help="seconds without a frame before a live source is reconnected (default: %(default)s)"),
    ))

SERVE = Command(
    "serve", "serve the kiosk web app and leaderboard",
    "Serve the kiosk judge from a judge bundle (a clip-embed student): a drawing canvas and camera "
    "page at /, the scoring API (its schema at /openapi.json; the interactive /docs with --docs) and the "
    "leaderboard. Submissions go to SQLite "
    "(WAL) and thumbnails to disk, durably: a crash loses no acknowledged submission. Admin routes "
    "(set the prompt, delete a submission) need the token given here; without one they are off."
    "\n\nexamples:\n"
    "  dkit serve runs/quickdraw/bundle --admin-token \"$(openssl rand -hex 16)\"\n"
    "  curl -F image=@drawing.png -F name=ada http://127.0.0.1:8000/api/submissions",
    cmd_serve, arguments=(
        arg("bundle", metavar="BUNDLE", help="judge bundle folder or .tar.gz"),
        arg("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for "
            "other machines)"),
        arg("--port", type=int, default=8000, help="port (default: %(default)s)"),
        arg("--db", metavar="PATH", help="SQLite database for submissions and prompts (default: "
            "kiosk/kiosk.sqlite beside the bundle); thumbnails go to a thumbs/ folder beside it"),
        arg("--admin-token", metavar="TOKEN", default=FromEnv("DKIT_ADMIN_TOKEN"),
            help="token for the admin routes (default: $DKIT_ADMIN_TOKEN; none: admin routes off)"),
        arg("--max-upload-mb", type=float, default=4.0, help="largest accepted image (default: %(default)s)"),
        arg("--threads", type=int, default=1, help="onnxruntime threads per request (default: %(default)s: "
            "requests run in parallel instead)"),
        arg("--docs", action="store_true", help="also serve the interactive API docs at /docs and /redoc (off by "
            "default: a kiosk faces the public)"),
    ))


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `run` and `serve` to the `dkit` subcommands."""
    register_commands(sub, parents, (RUN, SERVE))
