"""`dkit label`, `train`, `eval` and `export`: the training-side stages of the pipeline, run on a kit.

Each handler imports its stage (dkit.distill, dkit.export) only when it runs: those need the `distill`
extra, and a base install without it gets a one-line error (exit 4) instead of a crash at start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from dkit.cli.common import Command, Parents, arg, import_stage, load, register_commands
from dkit.cli.run_log import run_log
from dkit.core.run import RunDir


def cmd_label(args: argparse.Namespace) -> int:
    label_images = import_stage("dkit.distill.label", what="dkit label", extra="distill").label_images

    # --engine/--address are kit keys (label.engine, label.address), validated like --set
    args.overrides = [*args.overrides, *([f"label.engine={args.engine}"] if args.engine else []),
                      *([f"label.address={args.address}"] if args.address else [])]
    kit = load(args)
    with _logged(args, kit, "label"):
        result = label_images(kit, kit.run_dir(args.out), ground_truth=args.ground_truth, progress=args.quiet == 0,
                              kit_arg=_kit_arg(args))  # a missing file: `dkit fetch` with these same arguments
    c = result.counts
    labelled = sum(1 for r in result.records if r.labels)
    abstained = sum(1 for r in result.records if r.abstained)
    boxes = sum(len(r.labels) for r in result.records)
    rate = (c["files"] + c.get("pool_files", 0) - c.get("pool_over_max", 0)) / result.seconds
    sys.stdout.write(
        f"labels: {result.labels_dir}\n"
        f"  {c['files']} files: {labelled} labelled ({boxes} labels), {abstained} abstained, {c['skipped']} skipped; "
        f"teacher ran on {c['inferred']}, {c['cached']} from cache; {rate:.1f} images/s"
        f"{' (pool included)' if 'pool' in c else ''}\n"
        f"  report: {result.labels_dir / 'report.html'}\n"
    )
    if kit.label.engine != "local":
        dropped = c.get("duplicates_dropped", 0)
        sys.stdout.write(f"  engine: {kit.label.engine}, {c['actors']} teacher actors, {c['seconds']:.1f} s on the "
                         f"cluster ({c['files'] / max(c['seconds'], 1e-9):.1f} images/s)"
                         f"{f', {dropped} duplicate results dropped' if dropped else ''}\n")
    if "videos" in c:
        sys.stdout.write(f"  {c['videos']} videos: {c['frames_sampled']} frames sampled at {kit.data.video.fps:g} fps, "
                         f"{c['near_duplicates']} near-duplicates skipped, {c['frames_kept']} kept (labelled above "
                         f"as video#t=SECONDS)\n")
    if "pool" in c:
        left = [f"{c['pool_in_kit']} identical to the kit's images",
                f"{c.get('pool_held_out', 0)} in a held-out group (its video or a near-duplicate)",
                f"{c['pool_duplicates']} repeated", f"{c['pool_skipped']} unreadable"]
        left += [f"{c['pool_over_max']} over data.unlabeled_max"] if c["pool_over_max"] else []
        sys.stdout.write(f"  unlabeled pool: {c['pool']} of {c['pool_files']} images kept for the student "
                         f"({', '.join(left)} left out); teacher ran on {c['pool_inferred']}, {c['pool_cached']} "
                         f"from cache: {result.labels_dir / 'pool.jsonl'}\n")
    if result.quality is not None:
        q = result.quality
        sys.stdout.write(f"  vs ground truth: mAP50 {q['map50']:.3f}  mAP50-95 {q['map50_95']:.3f}  "
                         f"P {q['precision']:.3f}  R {q['recall']:.3f}  F1 {q['f1']:.3f}\n")
    return 0


def _logged(args: argparse.Namespace, kit, stage: str) -> contextlib.AbstractContextManager:
    """The stage's log scope (dkit.cli.run_log): RUN_DIR/logs/STAGE.log gets everything, the terminal the kit's own
    lines (and, with -v, the libraries')."""
    return run_log(RunDir(kit.run_dir(args.out)).log_file(stage), verbosity=args.verbose - args.quiet,
                   title=f"dkit {stage} {_kit_arg(args)}")


def _kit_arg(args: argparse.Namespace) -> str:
    """The kit as given on the command line, with its --data/--set: what `dkit fetch` needs to see the same kit."""
    import shlex

    words = [args.kit, *(["--data", str(args.data)] if args.data else []),
             *[w for o in args.overrides for w in ("--set", o)]]
    return shlex.join(words)


def cmd_train(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore

    student_plugin = import_stage("dkit.distill.students", what="dkit train", extra="distill").student_plugin
    kit = load(args)
    with _logged(args, kit, "train"):
        summary = student_plugin(kit).train(kit, kit.run_dir(args.out), store=ModelStore(), restart=args.restart,
                                            progress=args.quiet == 0)
    if os.environ.get("RANK", "0") != "0":  # under torchrun: one summary, from rank 0
        return 0
    how = ("already trained" if summary["already_trained"]
           else "resumed and trained" if summary["resumed"] else "trained")
    sys.stdout.write(f"student: {summary['weights']}\n  {how}: {summary['epochs']} epochs, started from "
                     f"{summary['started_from']}, {summary['seconds']:.0f} s\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore
    write_eval = import_stage("dkit.distill.evaluate", what="dkit eval", extra="distill").write_eval
    from dkit.distill.students import student_plugin

    kit = load(args)
    run_dir = kit.run_dir(args.out)
    with _logged(args, kit, "eval"):
        result = student_plugin(kit).evaluate(kit, run_dir, store=ModelStore(), ground_truth=args.ground_truth)
    json_path, md_path = write_eval(run_dir, result)
    sys.stdout.write(md_path.read_text() + f"\nwritten: {json_path}, {md_path}\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore
    export_bundle = import_stage("dkit.export.bundle", what="dkit export", extra="export").export_bundle

    kit = load(args)
    with _logged(args, kit, "export"):
        result = export_bundle(kit, kit.run_dir(args.out), store=ModelStore())
    lines = [f"bundle: {result['bundle']}"] + ([f"archive: {result['archive']}"] if result["archive"] else [])
    what = {"detect": "boxes agreeing after NMS", "classify": "top-1 agreeing with Ultralytics' predict",
            "embed": "mean cosine"}[result["task"]]
    for role, p in result["parity"].items():
        lines.append(f"  {role} ONNX parity on {p.get('images', p.get('prompts'))} "
                     f"{'images' if 'images' in p else 'prompts'}: max abs diff {p['max_abs_diff']:.2e}, "
                     f"{'mean cosine' if role == 'text' else what} {p['agreement']:.4f}")
    checks = result.get("device_checks")
    for precision, v in result["variants"].items():
        a = v["vs_fp32"]
        verdict = "REFUSED" if "refused" in v else _shipped(checks, f"onnxruntime/{precision}", a["metric"])
        lines.append(f"  {precision}: {a['metric']} vs fp32 {a['agreement']:.3f} on {a['images']} held-out images, "
                     f"{a['ms_per_image']:.1f} ms/image vs {a['ms_per_image_fp32']:.1f} fp32: {verdict}")
        for backend, check in (v.get("backends") or {}).items():
            if backend != "onnxruntime":
                lines.append(f"    on {backend}: {a['metric']} vs fp32 {check['agreement']:.3f}: "
                             + ("REFUSED there (auto never runs it on " + backend + ")" if "refused" in check
                                else _shipped(checks, f"{backend}/{precision}", a["metric"], "checked")))
    for role, v in result.get("formats", {}).items():
        a = v["vs_onnx"]
        verdict = "REFUSED" if "refused" in v else _shipped(checks, f"ncnn/{v['precision']}", a["metric"])
        lines.append(f"  {role} (NCNN {v['precision']}): {a['metric']} vs the ONNX model {a['agreement']:.3f} on "
                     f"{a['images']} held-out images, max abs diff {a['max_abs_diff']:.2g}: {verdict}")
    if result["calibration"]:
        c = result["calibration"]
        if c["agreement"].get("mean_abs_score_diff") is not None:
            lines.append(f"  score calibration from {c['images']} training images: on held-out images student vs "
                         f"teacher scores differ by {c['agreement']['mean_abs_score_diff']:.1f} points on average "
                         f"(Spearman {c['agreement']['spearman']:.3f})")
        m = c["agreement"].get("moderation") or {}
        if m.get("agreement") is not None:
            lines.append(f"  kiosk verdicts (moderation, as on the device): student and teacher agree on "
                         f"{m['agreement']:.3f} of {m['pairs']} image-prompt pairs")
    lines.append("  verified (schema, sha256)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _shipped(checks: dict | None, name: str, metric: str, word: str = "shipped") -> str:
    """The verdict on a shipped reduced-precision model, from the same figure the export's device-check warning
    quotes (the check run here on the bundle's checks/ images): a model that fails it is not just "shipped"."""
    figure = (checks or {}).get("figures", {}).get(name, "absent")
    if figure == "absent":
        return word
    if figure is None:
        return f"{word}; its device check could not run here"
    if figure < checks["guard"]:
        return (f"{word}, but FAILS its device check here: {metric} {figure:.3f} on the {checks['images']} check "
                f"images, below the guard {checks['guard']:g}; --precision auto on another CPU architecture leaves "
                "it out")
    return f"{word} (device check here: {metric} {figure:.3f} on the {checks['images']} check images)"


COMMANDS = (
    Command("label", "auto-label a folder of images with the teacher",
            "The teacher labels the kit's images into RUN_DIR/labels/: an Ultralytics data set "
            "(detection or classification layout, per the kit's student), labels.jsonl (one line per file) "
            "and report.html (counts, histograms, contact sheets, what to review, skipped files). Teacher "
            "outputs are cached in RUN_DIR/cache/, so a rerun or an interrupted run recomputes nothing. "
            "--engine ray runs the teacher on a Ray cluster (decoding in tasks, one teacher per actor, a GPU each "
            "when the cluster has them) with the same labels; it needs the scale extra.",
            cmd_label, kit=True, arguments=(
                arg("--engine", choices=("local", "ray"),
                    help="where the teacher runs (kit: label.engine; default local): local = this process, "
                         "ray = Ray Data tasks and teacher actors (the scale extra: pip install '.[scale]' in the "
                         "checkout)"),
                arg("--address", metavar="auto|ray://HOST:PORT",
                    help="ray engine: the cluster to join (kit: label.address); 'auto' = the one `ray start` runs "
                         "here; unset = a Ray started for this run on this machine"),
                arg("--ground-truth", metavar="DIR",
                    help="folder of YOLO-format labels (STEM.txt): also score the labels against them "
                         "(mAP50, mAP50-95, precision/recall/F1 at IoU 0.5) into quality.json and the report"),
            )),
    Command("train", "train the student on the teacher's labels",
            "Train the kit's student on RUN_DIR/labels/ into RUN_DIR/student/ (weights, the resolved "
            "config, curves.png, train.log). YOLO students start from pretrained weights when the model store "
            "has them, from scratch otherwise. An interrupted run resumes where it stopped.",
            cmd_train, kit=True, arguments=(
                arg("--restart", action="store_true", help="discard RUN_DIR/student/ and train from the start"),
            )),
    Command("eval", "evaluate the student against the teacher",
            "Write RUN_DIR/eval.json and eval.md: the student against the teacher that labelled the images (the "
            "same weights, size and test-time augmentation), and against ground truth when given.",
            cmd_eval, kit=True, arguments=(
                arg("--ground-truth", metavar="PATH",
                    help="ground truth for the held-out images: a folder of YOLO labels (STEM.txt) for detection, "
                         "a CSV with columns file,class for classification"),
            )),
    Command("export", "write the bundle for the device",
            "Write RUN_DIR/bundle/ (ONNX, fp16/int8 variants, manifest.json) and RUN_DIR/bundle.tar.gz.",
            cmd_export, kit=True),
)


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `label`, `train`, `eval` and `export` to the `dkit` subcommands."""
    register_commands(sub, parents, COMMANDS)
