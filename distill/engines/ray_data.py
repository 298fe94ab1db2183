"""The `ray` labeling engine: Ray Data decodes the images in tasks and runs the teacher in an actor pool.

    dkit label KIT --engine ray                      # a Ray started on this machine for the run, then stopped
    dkit label KIT --engine ray --address auto       # the cluster `ray start --head` runs (see docs/WORKFLOW.md: Ray)
    dkit label KIT --engine ray --address ray://head:10001

Pipeline (one row per input file, in blocks of `teacher.batch` files):

    paths ──from_items──▶ _read (tasks: read, sha256, decode with dkit.distill.images.load_image; the pixels
    travel only for images the cache lacks) ──▶ _TeacherActor pool (one teacher per actor, `label.actors`,
    `label.cpus_per_actor` CPUs and threads, `label.gpus_per_actor` GPUs: 1 each when the cluster has GPUs)
    ──▶ driver: each raw output into the one teacher cache (SQLite, committed per batch), then the same
    decide/record code as the local engine (dkit.distill.label.build_record)

So the labels equal the local engine's, a rerun sends only what the cache lacks to the teacher, and an
interrupted run keeps every batch that reached the driver. A worker or actor that dies is restarted by Ray and
its block run again (Ray Data's task retries and actor restarts); the driver keys rows by their input index,
so a row that arrives twice is counted (`duplicates_dropped`) and used once, and a row that never arrives
fails the run naming it. Decoding, hashing and the teacher run on the workers, which must see the same paths
(shared storage) and the same model store (DKIT_HOME); the driver keeps the cache and the run folder.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import ray
import ray.data

from dkit.core.errors import DkitError, UsageError
from dkit.core.records import LabelRecord
from dkit.distill.cache import TeacherCache, decode_raw, encode_raw
from dkit.distill.teachers import Teacher, build_teacher

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # a label.address that does not accept a connection in this time is an error
DECODE_CPUS = 0.25  # Ray's CPU share of one decode task: light next to a teacher, so both fit on a small machine


class RayEngineError(DkitError):
    """The Ray cluster could not be reached or the labeling job failed on it."""


def label_all(kit, teacher: Teacher, cache: TeacherCache, root: Path, paths: list[Path], staging: Path,
              progress: bool, *, store=None, make_teacher=None, on_row=None) -> tuple[list[LabelRecord], dict]:
    """Label `paths` on Ray; `make_teacher()` builds each actor's teacher (default: the kit's, from `store`).
    `on_row(n)` is called after each row reaches the driver (tests kill a worker from it)."""
    from dkit.distill.label import progress_bar

    staging.mkdir(parents=True)
    started = _connect(kit, store)
    try:
        make_teacher = make_teacher or functools.partial(build_teacher, kit, store)
        cached = frozenset(cache.keys(teacher.cache_key))
        gpus = _gpus(kit)
        actors = _actors(kit, gpus)
        ds = _dataset(kit, paths, root, cached, make_teacher, actors, gpus)
        records: list[LabelRecord | None] = [None] * len(paths)
        counts = {"files": len(paths), "cached": 0, "inferred": 0, "skipped": 0, "duplicates_dropped": 0,
                  "actors": actors}
        bar = progress_bar(len(paths), progress)
        start = time.perf_counter()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                _take(batch, records, counts, cache, teacher, kit, staging)
                bar.update(len(batch["i"]))
                if on_row is not None:
                    on_row(sum(r is not None for r in records))
        finally:
            bar.close()
        missing = [str(paths[i]) for i, r in enumerate(records) if r is None]
        if missing:
            raise RayEngineError(f"the Ray job returned no result for {len(missing)} file(s), e.g. {missing[0]}")
        counts["seconds"] = round(time.perf_counter() - start, 3)
        return records, counts
    except ray.exceptions.RayError as e:
        raise RayEngineError(f"the Ray labeling job failed: {e}") from e
    finally:
        if started:
            ray.shutdown()


def _connect(kit, store) -> bool:
    """Join `label.address`, or start a Ray on this machine (True: this run connected and disconnects after).
    A Ray started here gets one logical CPU more than the machine has: the decode tasks' share, so that on a
    small machine every core can hold a teacher actor."""
    ray.data.DataContext.get_current().enable_progress_bars = False  # the engine's own progress bar instead
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    _check_reachable(kit.label.address)
    env = {"DKIT_HOME": str(store.root)} if store is not None else {}
    env |= {k: v for k, v in os.environ.items() if k in ("DKIT_OFFLINE", "PYTHONPATH")}
    try:
        if kit.label.address is None:
            ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING",
                     runtime_env={"env_vars": env})
            return True
        ray.init(address=kit.label.address, log_to_driver=False, logging_level="WARNING",
                 runtime_env={"env_vars": env})
        return True
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayEngineError(f"label.address {kit.label.address!r}: cannot connect to a Ray cluster ({e}); start "
                             "one with `ray start --head` or leave label.address unset for a local Ray") from e


def _check_reachable(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A HOST:PORT or ray://HOST:PORT address must accept a TCP connection within `timeout_s`: Ray itself waits
    minutes for a cluster that is not there."""
    if address is None or address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RayEngineError(f"label.address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayEngineError(f"label.address {address!r}: nothing answers at {host}:{port} ({e}); start the "
                             "cluster with `ray start --head` there, or leave label.address unset for a local "
                             "Ray") from e


def _gpus(kit) -> float:
    if kit.label.gpus_per_actor is not None:
        return kit.label.gpus_per_actor
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _actors(kit, gpus: float) -> int:
    """label.actors, or one per `gpus` GPUs, or one per cpus_per_actor CPUs with one CPU left for decoding."""
    if kit.label.actors:
        return kit.label.actors
    resources = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int((resources.get("CPU", 1) - 1) // kit.label.cpus_per_actor))


def _dataset(kit, paths: list[Path], root: Path, cached: frozenset[str], make_teacher, actors: int, gpus: float):
    batch = kit.teacher.batch
    items = [{"i": i, "path": str(p)} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch)))
    ds = ds.map_batches(functools.partial(_read, root=str(root), cached=cached), batch_size=batch,
                        batch_format="numpy", num_cpus=DECODE_CPUS)
    return ds.map_batches(_TeacherActor, fn_constructor_kwargs={"make_teacher": make_teacher,
                                                                "threads": max(1, int(kit.label.cpus_per_actor))},
                          batch_size=batch, batch_format="numpy", num_cpus=kit.label.cpus_per_actor,
                          num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=actors))


_COLUMNS = ("i", "path", "rel", "sha256", "height", "width", "skipped", "normalised", "pixels", "copy", "cached")


def _read(batch: dict, *, root: str, cached: frozenset[str]) -> dict:
    """Ray task: read, hash and decode each file; pixels (raw bytes, (H, W, 3) uint8) only where the cache lacks
    them, a JPEG copy where the data set cannot link the file."""
    from dkit.distill.images import load_image
    from dkit.distill.label import jpeg_copy, needs_copy

    out = {k: [] for k in _COLUMNS}
    for i, path in zip(batch["i"], batch["path"], strict=True):
        li = load_image(Path(str(path)), Path(root))
        hit = li.ok and li.sha256 in cached
        row = {"i": int(i), "path": str(li.path), "rel": li.rel, "sha256": li.sha256 or "", "height": li.height,
               "width": li.width, "skipped": li.skipped or "", "normalised": li.normalised or "",
               "pixels": li.rgb.tobytes() if li.ok and not hit else b"",
               "copy": jpeg_copy(li.rgb, li.path) if li.ok and needs_copy(li.path, li.normalised) else b"",
               "cached": hit}
        for k in _COLUMNS:
            out[k].append(row[k])
    return {k: np.array(v, dtype=object) if k in ("pixels", "copy") else np.array(v) for k, v in out.items()}


class _TeacherActor:
    """Ray actor: one teacher, built once; each batch's images the cache lacks go through `teacher.infer`."""

    def __init__(self, make_teacher, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.teacher = make_teacher()

    def __call__(self, batch: dict) -> dict:
        todo = [k for k, px in enumerate(batch["pixels"]) if len(px)]
        images = [np.frombuffer(batch["pixels"][k], np.uint8).reshape(int(batch["height"][k]),
                                                                     int(batch["width"][k]), 3) for k in todo]
        raws = self.teacher.infer(images) if images else []
        out = [b""] * len(batch["i"])
        for k, raw in zip(todo, raws, strict=True):
            out[k] = encode_raw(raw)
        rest = {k: v for k, v in batch.items() if k != "pixels"}  # the pixels stay on the worker
        return rest | {"raw": np.array(out, dtype=object)}


def _take(batch: dict, records: list, counts: dict, cache: TeacherCache, teacher: Teacher, kit,
          staging: Path) -> None:
    """Driver: one batch of results into the cache (one transaction) and the records, each input index once."""
    from dkit.distill.label import build_record, skipped_record, write_copy

    fresh = []
    for k, i in enumerate(int(v) for v in batch["i"]):
        if records[i] is not None:
            counts["duplicates_dropped"] += 1
            continue
        sha, path, rel = str(batch["sha256"][k]), Path(str(batch["path"][k])), str(batch["rel"][k])
        if batch["skipped"][k]:
            records[i] = skipped_record(path, rel, sha or None, str(batch["skipped"][k]), teacher)
            counts["skipped"] += 1
            log.info("skipped %s: %s", rel, records[i].skipped)
            continue
        if batch["cached"][k]:
            raw = cache.get(teacher.cache_key, sha)
            if raw is None:
                raise UsageError(f"{cache.path}: the teacher output for {rel} vanished from the cache during the run")
            counts["cached"] += 1
        else:
            raw = decode_raw(batch["raw"][k])
            fresh.append((sha, raw))
            counts["inferred"] += 1
        if len(batch["copy"][k]):
            write_copy(staging, sha, lambda k=k: batch["copy"][k])
        normalised = str(batch["normalised"][k]) or None
        records[i] = build_record(path, rel, sha, (int(batch["height"][k]), int(batch["width"][k])), normalised,
                                  raw, teacher, kit)
    if fresh:
        cache.put_many(teacher.cache_key, fresh)
