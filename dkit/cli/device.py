"""`dkit run` and `dkit serve`: the commands that run a bundle on the device.

They use only the edge runtime (dkit.edge: numpy, onnxruntime, OpenCV; uvicorn for the kiosk), imported
inside the handlers, so they work on a base install without torch. The edge's own errors become the CLI's
exit codes through `edge_errors`.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from dkit.cli.common import DEVICE_EXITS, Command, Parents, arg, edge_errors, log, register_commands
from dkit.core.errors import DkitError, UsageError


def cmd_run(args: argparse.Namespace) -> int:
    import json

    with edge_errors():
        from dkit.edge.infer.runtime import Runtime
        from dkit.edge.stream.pipeline import JsonlSink, Pipeline, VideoSink, WindowSink, check_window
        from dkit.edge.stream.sources import open_source

        if args.max_fps is not None and not args.max_fps >= 0:  # before the model loads (NaN too)
            raise UsageError(f"--max-fps {args.max_fps:g}: expected a rate >= 0 (0: as fast as frames come)")
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
                sinks.append(JsonlSink(sys.stdout))
            video = VideoSink(args.save, fps=None) if args.save else None  # its rate: the sources'
            if video is not None:
                sinks.append(video)
            window = WindowSink() if args.show else None  # before any capture starts
            sources = []
            try:
                for spec in args.source:
                    sources.append(open_source(spec, stall_timeout=args.stall_timeout, open_tries=args.open_tries))
                if video is not None:
                    video.fps, video.why = recording_rate(sources, max_fps)
                pipeline = Pipeline(runtime, sources, sinks, max_fps=max_fps, max_frames=args.max_frames)
                if window is not None:
                    window.on_quit = pipeline.stop
                    pipeline.sinks.append(window)
                pipeline.install_signal_handlers()
                stats = pipeline.run()
            finally:
                stuck = _close_sources(sources, args.stall_timeout)
    sys.stderr.write("dkit: stats " + json.dumps(stats) + "\n")
    if not stats["frames"] and not stats["stopped"]:
        raise DkitError(_no_frames(stats, sources))
    if stuck:  # no interpreter shutdown may meet a thread inside OpenCV (it would abort): leave without one
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _close_sources(sources: list, stall_timeout: float) -> list:
    """Close every source and wait for its capture threads to end (a signal handler only asked them to stop):
    a daemon thread still inside OpenCV (imdecode, a capture's read) when the interpreter shuts down is ended by
    a forced unwind through C++ that aborts the process ("terminate called without an active exception", exit
    -6). A live read gives up within `stall_timeout` (the stream's own read timeout is shorter), so that long is
    waited, plus a second. Returns the sources with a thread still alive after it (a driver stuck in read())."""
    for source in sources:
        source.close(timeout=0)  # all of them told at once, then each waited for
    for source in sources:
        source.close(timeout=stall_timeout + 1.0)
    stuck = [source for source in sources if source.running]
    for source in stuck:
        log.warning("%s: a capture thread is still inside the driver's read() after %.0f s; exiting without "
                    "waiting for it", source.spec, stall_timeout + 1.0)
    return stuck


def recording_rate(sources: list, max_fps: float) -> tuple[float | None, str]:
    """(frames per second, why) for `--save`: the rate the recording must play at to keep real time.

    Video files deliver every frame in order (--max-fps slows the run, it drops none), so the file's own rate
    (CAP_PROP_FPS), summed over several videos written in turn. A camera or stream delivers what it captured after
    --max-fps and the frames dropped while the model was busy: None, measured from the capture times of the first
    frames written (VideoSink). Folders and images have no rate: --max-fps, else 15."""
    rates = [s.media_fps for s in sources]
    if any(s.live for s in sources):
        cap = f"; --max-fps {max_fps:g} caps it" if max_fps else ""
        return None, f"a live source: measured from the capture times of the first frames{cap}"
    if all(rate is not None for rate in rates):
        names = ", ".join(f"{s.spec} {rate:g} fps" for s, rate in zip(sources, rates, strict=True))
        return round(sum(rates), 3), f"the video's own rate (CAP_PROP_FPS: {names}); every frame is recorded"
    if max_fps:
        return max_fps, "images have no frame rate: --max-fps"
    return 15.0, "images (or a video without a frame rate) have no rate and no --max-fps is set: 15 fps"


def _no_frames(stats: dict, sources: list) -> str:
    """Why a run that was not stopped scored nothing: a zero-frame run is a failed run, never exit 0."""
    errors = "; ".join(f"{s.spec}: {s.stats.last_error}" for s in sources if s.stats.last_error)
    return (f"no frame was scored: {stats['read']} read, {stats['corrupt']} unreadable or corrupt"
            + (f" ({errors})" if errors else ""))


def cmd_serve(args: argparse.Namespace) -> int:
    from dkit.edge.kiosk.serving import ListenError, listen

    try:  # before the model loads and before "kiosk on ...": a port in use is a wrong --port (exit 2), said so
        sock = listen(args.host, args.port)
    except ListenError as e:
        option = f"--port {args.port}" if e.errno in (errno.EADDRINUSE, errno.EACCES) else f"--host {args.host}"
        raise UsageError(f"{option}: {e.strerror}") from e
    try:
        return _serve(args, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, sock) -> int:
    with edge_errors():
        from dkit.edge.kiosk.server import create_app
        from dkit.edge.kiosk.serving import StartupError, serve

        bundle = Path(args.bundle)
        proxies = _proxies(args.proxy)
        db = Path(args.db) if args.db else bundle.resolve().parent / "kiosk" / "kiosk.sqlite"
        token = admin_token(args)
        try:
            app = create_app(bundle, db=db, admin_token=token, max_upload=int(args.max_upload_mb * (1 << 20)),
                             threads=args.threads, docs=args.docs, settings=args.set or ())
        except ValueError as e:  # a bad --set, or the bundle's kiosk settings
            raise UsageError(str(e)) from e
    cfg = app.state.kiosk.cfg
    log.info("kiosk on http://%s:%d (database %s; admin %s; limits: %s; X-Forwarded-For %s)", args.host, args.port,
             db, f"on at http://{args.host}:{args.port}/admin" if token else "off", _limits(cfg),
             f"from {', '.join(proxies)}" if proxies else "ignored")
    try:
        serve(app, host=args.host, port=args.port, cfg=cfg, sock=sock, proxies=proxies)
    except StartupError as e:  # exit 1: the app could not start (uvicorn logged why)
        raise DkitError(str(e)) from e
    return 0


def _proxies(text: str | None) -> list[str]:
    """--proxy ADDR[,ADDR]: the proxies allowed to set X-Forwarded-For (none: the header is ignored)."""
    from dkit.edge.kiosk.serving import proxy_networks

    proxies = [p.strip() for p in (text or "").split(",") if p.strip()]
    try:
        proxy_networks(proxies)
    except ValueError as e:
        raise UsageError(f"--proxy: {e}") from e
    return proxies


def _kiosk_keys() -> str:
    """The kiosk limits `dkit serve --set` takes, with their defaults: KEY=VALUE, ... (from KioskConfig itself)."""
    from dkit.edge.bundle.kiosk_config import KioskConfig

    return ", ".join(f"{k}={v:g}" for k, v in KioskConfig().to_dict().items() if isinstance(v, int | float))


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
        arg("--save", metavar="PATH", help="write the annotated frames to a video file (.mp4, .avi, ...) at the "
            "source's rate (a video's own; a camera's or stream's measured; a folder's --max-fps, else 15), logged"),
        arg("--max-fps", type=float, metavar="N", help="at most N rounds per second (default: the bundle's "
            "runtime.max_fps; 0 = as fast as frames come)"),
        arg("--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0: no limit)"),
        arg("--providers", metavar="LIST", help="onnxruntime's execution providers in order, comma-separated, "
            "e.g. cuda,cpu (default: the best available: tensorrt > cuda > openvino > coreml > cpu); giving them "
            "means the onnxruntime backend"),
        arg("--backend", choices=["auto", "onnxruntime", "openvino", "ncnn"], default="auto",
            help="inference library: auto (default) times the bundle's models on every backend installed here "
                 "once, keeps the fastest (cached per device in $DKIT_HOME/choices.json) and logs the figures; "
                 "openvino and ncnn need their packages (`pip install openvino` / `ncnn`, or `dkit device-pack "
                 "--extra`), and ncnn a bundle "
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
    ), exits={**DEVICE_EXITS, 2: "bad arguments (an unknown option or value, a path that is no bundle, a source "
                                 "that cannot be opened)"})

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
        arg("--set", action="append", metavar="KEY=VALUE", help="override one of the bundle's kiosk limits "
            "(dkit.edge.bundle.kiosk_config; docs/KIOSK.md says what each does), the defaults: "
            f"{_kiosk_keys()}; "
            "blocklist=FILE; repeat it for several"),
        arg("--proxy", metavar="ADDR[,ADDR]", help="the reverse proxies (addresses or networks, e.g. 127.0.0.1 or "
            "10.0.0.0/24) allowed to say who the client is with X-Forwarded-For; the per-client limits, caps and "
            "bans then apply to the address it names (default: none, the header is ignored: anyone could set it)"),
        arg("--max-upload-mb", type=float, default=4.0, help="largest accepted image (default: %(default)s)"),
        arg("--threads", type=int, default=1, help="onnxruntime threads per request (default: %(default)s: "
            "requests run in parallel instead)"),
        arg("--docs", action="store_true", help="also serve the interactive API docs at /docs and /redoc (off by "
            "default: a kiosk faces the public)"),
    ), exits={**DEVICE_EXITS, 2: "bad arguments (an unknown option or value, a path that is no bundle, a bad "
                                 "--set, a port in use)"})


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `run` and `serve` to the `dkit` subcommands."""
    register_commands(sub, parents, (RUN, SERVE))
