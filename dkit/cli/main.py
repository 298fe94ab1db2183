"""The `dkit` command line: one subcommand per stage of the pipeline.

    dkit check  KIT                 validate a kit YAML and print it resolved
    dkit fetch  KIT                 put the kit's weights and images into the model store
    dkit label  KIT --data DIR      the teacher labels a folder of images
    dkit train  KIT                 train the student on those labels
    dkit eval   KIT                 measure how much of the teacher the student kept
    dkit export KIT                 write the bundle (ONNX + manifest) for the device
    dkit run    BUNDLE --source S   score camera frames on the device
    dkit serve  BUNDLE              the kiosk web app and leaderboard
    dkit bench  label|runtime|serve throughput figures as JSON

Each stage module is imported only when its subcommand runs, so `dkit run` and `dkit serve` work on
a base (edge-only) install. Errors the user can act on print one line and exit with a code from
dkit.core.errors (2 bad kit or arguments, 3 missing model/data file, 4 missing extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from dkit.core.errors import DkitError, NotInStoreError
from dkit.core.version import __version__

log = logging.getLogger("dkit")

_EPILOG = """\
exit codes: 0 done, 1 a run failed, 2 bad kit YAML or arguments, 3 a model or data file is missing
(offline), 4 an optional extra is not installed, 130 interrupted.
environment: DKIT_HOME (model store, default ~/.cache/dkit), DKIT_OFFLINE=1 (never download).
"""


def main(argv: list[str] | None = None) -> int:
    # Ultralytics pip-installs missing packages at run time unless told not to; the kit never does that.
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_OFFLINE", "true")  # no update checks or telemetry calls from the CLI
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose - args.quiet)
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
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors")
    parser.set_defaults(verbose=0, quiet=0)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help_: str, description: str, *, kit: bool) -> argparse.ArgumentParser:
        parents = [verbosity, _kit_arguments()] if kit else [verbosity]
        return sub.add_parser(name, help=help_, description=description, epilog=_EPILOG, parents=parents,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("check", "validate a kit YAML and print it resolved",
                "Validate a kit YAML (with any --data/--set overrides) and print the resolved kit as YAML, "
                "with absolute paths and every default filled in.", kit=True)
    p.set_defaults(handler=cmd_check)

    p = command("fetch", "put the kit's weights and images into the model store",
                "Resolve every file the kit needs (teacher weights, student starting weights, images) in the "
                "model store ($DKIT_HOME), downloading what is missing. Run it on a machine with a network, "
                "then copy $DKIT_HOME to an offline one.", kit=True)
    p.set_defaults(handler=cmd_fetch)

    p = command("label", "auto-label a folder of images with the teacher",
                "The teacher labels the kit's images into RUN_DIR/labels/: an Ultralytics data set "
                "(detection or classification layout, per the kit's student), labels.jsonl (one line per file) "
                "and report.html (counts, histograms, contact sheets, what to review, skipped files). Teacher "
                "outputs are cached in RUN_DIR/cache/, so a rerun or an interrupted run recomputes nothing.",
                kit=True)
    p.add_argument("--ground-truth", metavar="DIR",
                   help="folder of YOLO-format labels (STEM.txt): also score the labels against them "
                        "(mAP50, mAP50-95, precision/recall/F1 at IoU 0.5) into quality.json and the report")
    p.set_defaults(handler=cmd_label)

    p = command("train", "train the student on the teacher's labels",
                "Train the kit's student on RUN_DIR/labels/ into RUN_DIR/student/ (weights, the resolved "
                "config, curves.png, train.log). YOLO students start from pretrained weights when the model store "
                "has them, from scratch otherwise. An interrupted run resumes where it stopped.", kit=True)
    p.add_argument("--restart", action="store_true", help="discard RUN_DIR/student/ and train from the start")
    p.set_defaults(handler=cmd_train)

    p = command("eval", "evaluate the student against the teacher",
                "Write RUN_DIR/eval.json and eval.md: the student against the teacher (and ground truth).",
                kit=True)
    p.add_argument("--ground-truth", metavar="PATH",
                   help="ground truth for the held-out images: a folder of YOLO labels (STEM.txt) for detection, "
                        "a CSV with columns file,class for classification")
    p.set_defaults(handler=cmd_eval)

    p = command("export", "write the bundle for the device",
                "Write RUN_DIR/bundle/ (ONNX, fp16/int8 variants, manifest.json) and RUN_DIR/bundle.tar.gz.",
                kit=True)
    p.set_defaults(handler=cmd_export)

    p = command("run", "score camera frames with a bundle (on the device)",
                "Run a bundle on frames from cameras, streams, videos, folders or images: the edge runtime "
                "(numpy + onnxruntime + OpenCV, no torch). Live sources keep only their newest frame, so latency "
                "never grows; a dropped camera or stream reconnects with backoff and the run goes on. Ctrl-C (or "
                "SIGTERM) stops it cleanly; a final stats line (frames, fps, p50/p99 latency, dropped frames, "
                "reconnects) goes to stderr.\n\nexamples:\n"
                "  dkit run runs/coco128/bundle --source 0 --jsonl\n"
                "  dkit run bundle.tar.gz --source rtsp://cam/stream --source rtsp://cam2/stream --save out.mp4\n"
                "  dkit run runs/coco128/bundle --source ../shared/assets/data/coco128/images/train2017 --jsonl",
                kit=False)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder or .tar.gz")
    p.add_argument("--source", required=True, action="append", metavar="SRC",
                   help="camera index, video file, rtsp:// or http:// URL, image folder or image; repeat it for "
                        "several cameras (scored together in one batch when the model allows)")
    p.add_argument("--jsonl", action="store_true", help="print one JSON line per frame on stdout")
    p.add_argument("--show", action="store_true", help="show the annotated frames in a window (q quits)")
    p.add_argument("--save", metavar="PATH", help="write the annotated frames to a video file (.mp4, .avi, ...)")
    p.add_argument("--max-fps", type=float, metavar="N", help="at most N rounds per second (default: the bundle's "
                   "runtime.max_fps; 0 = as fast as frames come)")
    p.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0: no limit)")
    p.add_argument("--providers", metavar="LIST", help="execution providers in order, comma-separated, e.g. "
                   "cuda,cpu (default: the best available: tensorrt > cuda > openvino > coreml > cpu)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="which of the bundle's models to run (default: %(default)s)")
    p.add_argument("--conf", type=float, help="detection/classification confidence threshold (default: the bundle's)")
    p.add_argument("--iou", type=float, help="NMS IoU threshold (default: the bundle's)")
    p.add_argument("--stall-timeout", type=float, default=5.0, metavar="S",
                   help="seconds without a frame before a live source is reconnected (default: %(default)s)")
    p.set_defaults(handler=cmd_run)

    p = command("serve", "serve the kiosk web app and leaderboard",
                "Serve the kiosk judge from a judge bundle (a clip-embed student): a drawing canvas and camera "
                "page at /, the scoring API (/docs, /openapi.json) and the leaderboard. Submissions go to SQLite "
                "(WAL) and thumbnails to disk, durably: a crash loses no acknowledged submission. Admin routes "
                "(set the prompt, delete a submission) need the token given here; without one they are off."
                "\n\nexamples:\n"
                "  dkit serve runs/quickdraw/bundle --admin-token \"$(openssl rand -hex 16)\"\n"
                "  curl -F image=@drawing.png -F name=ada http://127.0.0.1:8000/api/submissions",
                kit=False)
    p.add_argument("bundle", metavar="BUNDLE", help="judge bundle folder or .tar.gz")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for "
                   "other machines)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--db", metavar="PATH", help="SQLite database for submissions and prompts (default: "
                   "kiosk/kiosk.sqlite beside the bundle); thumbnails go to a thumbs/ folder beside it")
    p.add_argument("--admin-token", metavar="TOKEN", default=os.environ.get("DKIT_ADMIN_TOKEN"),
                   help="token for the admin routes (default: $DKIT_ADMIN_TOKEN; none: admin routes off)")
    p.add_argument("--max-upload-mb", type=float, default=4.0, help="largest accepted image (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per request (default: %(default)s: "
                   "requests run in parallel instead)")
    p.set_defaults(handler=cmd_serve)

    p = command("bench", "measure throughput; prints JSON",
                "Benchmarks that compare the kit's pipeline with the bare library call in one run.", kit=False)
    bench = p.add_subparsers(title="benchmarks", metavar="WHAT", required=True)
    b = bench.add_parser("label", help="labeling images/s vs the bare teacher", parents=[verbosity, _kit_arguments()],
                         description="Images/s of the whole `dkit label` pipeline (ips_label) against the bare "
                                     "teacher forward pass on the same images (ips_bare), in one run; JSON on stdout.")
    b.add_argument("--repeat", type=int, default=3,
                   help="alternating timed rounds of each, best kept (default: %(default)s)")
    b.set_defaults(handler=cmd_bench_label)
    b = bench.add_parser("runtime", help="edge frames/s vs bare onnxruntime and Ultralytics", parents=[verbosity],
                         description="Frames/s of the edge runtime (pre-processing, session, post-processing) on "
                                     "real images (fps_runtime), against the bare onnxruntime session.run loop on "
                                     "the same pre-processed inputs (fps_bare, the limit) and, for detectors and "
                                     "classifiers when ultralytics is installed, Ultralytics' YOLO(model.onnx)."
                                     "predict on the same ONNX and images (fps_ultralytics); rounds alternate, the "
                                     "best of each is kept. Also p50/p99 latency of the runtime and the full "
                                     "pipeline from the folder (decoding included). JSON on stdout.")
    b.add_argument("bundle", metavar="BUNDLE")
    b.add_argument("--source", required=True, metavar="DIR", help="folder of images (decoded once, up front)")
    b.add_argument("--images", type=int, default=64, help="images used from the folder (default: %(default)s)")
    b.add_argument("--repeat", type=int, default=5, help="alternating rounds of each (default: %(default)s)")
    b.add_argument("--threads", type=int, help="onnxruntime intra-op threads (0: its default)")
    b.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    b.set_defaults(handler=cmd_bench_runtime)
    b = bench.add_parser("serve", help="kiosk submissions/s and latency on loopback", parents=[verbosity],
                         description="Starts `dkit serve` on the bundle (its own process, a fresh database) and "
                                     "posts --submissions drawings from --concurrency clients with keep-alive "
                                     "connections on loopback: sustained scored submissions/s (rps), p50/p99 latency "
                                     "and the server's resident memory before and after. JSON on stdout.")
    b.add_argument("bundle", metavar="BUNDLE", help="judge bundle folder or .tar.gz")
    b.add_argument("--submissions", type=int, default=10_000, help="submissions in all (default: %(default)s)")
    b.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default: %(default)s)")
    b.add_argument("--source", metavar="DIR", help="folder of drawings to post (default: seeded random-stroke "
                   "doodles)")
    b.add_argument("--threads", type=int, default=1, help="the server's onnxruntime threads (default: %(default)s)")
    b.set_defaults(handler=cmd_bench_serve)
    return parser


def _kit_arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("kit", metavar="KIT", help="kit YAML file, e.g. datasets/coco128/kit.yaml")
    p.add_argument("--data", metavar="DIR", help="folder of images (overrides data.images in the kit)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<kit name>/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a kit value, validated like the file; repeatable "
                        "(e.g. --set teacher.imgsz=1280 --set export.precisions=[fp32,int8])")
    return p


# ------------------------------------------------------------------------------------------ commands


def load(args: argparse.Namespace):
    """The kit named on the command line, validated, with its overrides applied."""
    from dkit.core.kit import load_kit

    kit = load_kit(args.kit, data=args.data, overrides=args.overrides)
    if kit.teacher.is_random:
        log.warning(
            "teacher.pretrained is 'random': the teacher is UNTRAINED. Labels, evaluation and bundles "
            "made from this kit are meaningless and are marked as such. Use it for tests only."
        )
    return kit


def cmd_check(args: argparse.Namespace) -> int:
    import yaml

    kit = load(args)
    doc = _plain(dataclasses.asdict(kit))
    sys.stdout.write(f"# {args.kit}: valid. Runs go to {kit.run_dir(args.out)}\n")
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore

    kit = load(args)
    store = ModelStore()
    sys.stdout.write(f"model store: {store.root}{' (offline)' if store.offline else ''}\n")
    missing = 0

    def item(role: str, resolve, optional: str = "") -> None:
        nonlocal missing
        try:
            found = resolve()
        except NotInStoreError as e:
            missing += not optional
            sys.stdout.write(f"  {role:8s} MISSING  {e}{optional}\n")
        else:
            sys.stdout.write(f"  {role:8s} ok       {found}\n")

    t = kit.teacher
    if t.kind == "yolo":
        item("teacher", lambda: store.yolo_weights(t.model) if not t.is_random else "untrained (random)")
    else:
        item("teacher", lambda: store.clip_checkpoint(t.model, t.pretrained) or "untrained (random)")
    s = kit.student
    if s.kind.startswith("yolo"):
        item("student", lambda: store.yolo_weights(s.model), optional=" (optional: training starts from scratch)")
    if kit.data.images is not None:
        item("images", lambda: kit.data.images)
    elif kit.data.url is not None:
        item("images", lambda: store.dataset(kit.data.url, sha256=kit.data.sha256, subdir=kit.data.subdir))
    else:
        sys.stdout.write("  images   none set (pass --data DIR to label)\n")
    if missing:
        sys.stderr.write(f"dkit: error: {missing} file(s) missing from the model store (see above)\n")
        return NotInStoreError.exit_code
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from dkit.distill.label import label_images

    kit = load(args)
    result = label_images(kit, kit.run_dir(args.out), ground_truth=args.ground_truth, progress=args.quiet == 0)
    c = result.counts
    labelled = sum(1 for r in result.records if r["labels"])
    abstained = sum(1 for r in result.records if r["abstained"])
    boxes = sum(len(r["labels"]) for r in result.records)
    sys.stdout.write(
        f"labels: {result.labels_dir}\n"
        f"  {c['files']} files: {labelled} labelled ({boxes} labels), {abstained} abstained, {c['skipped']} skipped; "
        f"teacher ran on {c['inferred']}, {c['cached']} from cache; {c['files'] / result.seconds:.1f} images/s\n"
        f"  report: {result.labels_dir / 'report.html'}\n"
    )
    if result.quality is not None:
        q = result.quality
        sys.stdout.write(f"  vs ground truth: mAP50 {q['map50']:.3f}  mAP50-95 {q['map50_95']:.3f}  "
                         f"P {q['precision']:.3f}  R {q['recall']:.3f}  F1 {q['f1']:.3f}\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore
    from dkit.distill.students import student_module

    kit = load(args)
    summary = student_module(kit).train(kit, kit.run_dir(args.out), store=ModelStore(), restart=args.restart,
                                        progress=args.quiet == 0)
    how = ("already trained" if summary["already_trained"]
           else "resumed and trained" if summary["resumed"] else "trained")
    sys.stdout.write(f"student: {summary['weights']}\n  {how}: {summary['epochs']} epochs, started from "
                     f"{summary['started_from']}, {summary['seconds']:.0f} s\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore
    from dkit.distill.evaluate import write_eval
    from dkit.distill.students import student_module

    kit = load(args)
    run_dir = kit.run_dir(args.out)
    result = student_module(kit).evaluate(kit, run_dir, store=ModelStore(), ground_truth=args.ground_truth)
    json_path, md_path = write_eval(run_dir, result)
    sys.stdout.write(md_path.read_text() + f"\nwritten: {json_path}, {md_path}\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore
    from dkit.export.bundle import export_bundle

    kit = load(args)
    result = export_bundle(kit, kit.run_dir(args.out), store=ModelStore())
    lines = [f"bundle: {result['bundle']}"] + ([f"archive: {result['archive']}"] if result["archive"] else [])
    what = {"detect": "boxes agreeing after NMS", "classify": "top-1 agreeing with Ultralytics' predict",
            "embed": "mean cosine"}[result["task"]]
    for role, p in result["parity"].items():
        lines.append(f"  {role} ONNX parity on {p.get('images', p.get('prompts'))} "
                     f"{'images' if 'images' in p else 'prompts'}: max abs diff {p['max_abs_diff']:.2e}, "
                     f"{'mean cosine' if role == 'text' else what} {p['agreement']:.4f}")
    for precision, v in result["variants"].items():
        a = v["vs_fp32"]
        verdict = "REFUSED" if "refused" in v else "shipped"
        lines.append(f"  {precision}: {a['metric']} vs fp32 {a['agreement']:.3f}, {a['ms_per_image']:.1f} ms/image vs "
                     f"{a['ms_per_image_fp32']:.1f} fp32: {verdict}")
    if result["calibration"]:
        c = result["calibration"]
        lines.append(f"  score calibration from {c['images']} images: student vs teacher scores differ by "
                     f"{c['agreement']['mean_abs_score_diff']:.1f} points on average (Spearman "
                     f"{c['agreement']['spearman']:.3f})")
    lines.append("  verified (schema, sha256)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_bench_label(args: argparse.Namespace) -> int:
    import json

    from dkit.core.store import ModelStore
    from dkit.distill.bench import bench_label

    sys.stdout.write(json.dumps(bench_label(load(args), store=ModelStore(), repeat=args.repeat), indent=2) + "\n")
    return 0


def _edge_errors():
    """The edge's own exceptions, as the CLI's exit codes (it has no dkit.core.errors dependency of its own)."""
    from dkit.core.errors import UsageError
    from dkit.edge.bundle import BundleError
    from dkit.edge.runtime import RuntimeConfigError
    from dkit.edge.sources import SourceError

    return {BundleError: DkitError, RuntimeConfigError: UsageError, SourceError: UsageError}


def cmd_run(args: argparse.Namespace) -> int:
    import json

    errors = _edge_errors()
    try:
        from dkit.edge.pipeline import JsonlSink, Pipeline, VideoSink, WindowSink
        from dkit.edge.runtime import Runtime
        from dkit.edge.sources import open_source

        providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
        runtime = Runtime.load(args.bundle, providers=providers, threads=args.threads, precision=args.precision,
                               conf=args.conf, iou=args.iou)
        with runtime:
            max_fps = args.max_fps if args.max_fps is not None else float(
                (runtime.manifest.get("runtime") or {}).get("max_fps") or 0.0)
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
    except tuple(errors) as e:
        raise next(v for k, v in errors.items() if isinstance(e, k))(str(e)) from e
    sys.stderr.write("dkit: stats " + json.dumps(stats) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    errors = _edge_errors()
    try:
        import uvicorn

        from dkit.edge.server import create_app

        bundle = Path(args.bundle)
        db = Path(args.db) if args.db else bundle.resolve().parent / "kiosk" / "kiosk.sqlite"
        app = create_app(bundle, db=db, admin_token=args.admin_token, max_upload=int(args.max_upload_mb * (1 << 20)),
                         threads=args.threads)
    except tuple(errors) as e:
        raise next(v for k, v in errors.items() if isinstance(e, k))(str(e)) from e
    log.info("kiosk on http://%s:%d (database %s; admin routes %s)", args.host, args.port, db,
             "on" if args.admin_token else "off")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
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


def cmd_bench_runtime(args: argparse.Namespace) -> int:
    import importlib.util
    import json

    from dkit.edge.bench import bench_runtime

    reference = None  # the Ultralytics reference needs the distill extra; a base install measures the rest
    if importlib.util.find_spec("ultralytics") is not None:
        from dkit.distill.bench import ultralytics_predictor as reference
    errors = _edge_errors()
    try:
        result = bench_runtime(args.bundle, args.source, images=args.images, repeat=args.repeat,
                               threads=args.threads, precision=args.precision, reference=reference)
    except tuple(errors) as e:
        raise next(v for k, v in errors.items() if isinstance(e, k))(str(e)) from e
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def _plain(value: Any) -> Any:
    """Dataclass dict -> YAML-safe values (paths as strings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _setup_logging(level: int) -> None:
    """Log to stderr; leaves alone a process that configured logging itself (an app, pytest)."""
    lvl = logging.WARNING if level < 0 else logging.INFO if level == 0 else logging.DEBUG
    logging.basicConfig(level=lvl, format="dkit: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(lvl)
