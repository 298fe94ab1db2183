"""The clip-embed student's inputs: the preprocessing as data, the training views, the teacher's targets.

Preprocessing is data (`preprocess_spec`) implemented with OpenCV/numpy only (`preprocess`), so the edge
runtime repeats it exactly without torch. A training view is a random crop chosen in the source image's
pixels and resized once to the input size with the device's interpolation (the device also resizes its
source once), then a horizontal flip and a little brightness/contrast jitter and the same normalisation;
evaluation uses `preprocess`.

Targets are the teacher's normalised image embeddings of every labelled image (`labels/labels.jsonl`,
split train or val) and of the unlabeled pool's images (`labels/pool.jsonl`, trained on, never held out), read
from the teacher cache `dkit label` filled.

Small sets are decoded once and kept in memory as uint8 images (training images at their source resolution,
held-out ones preprocessed to the input size); above MEMORY_BUDGET bytes they are decoded again every epoch by
DataLoader workers, so memory stays bounded.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dkit.core.errors import DkitError, UsageError
from dkit.core.records import LabelRecord
from dkit.core.run import RunDir
from dkit.distill.cache import TeacherCache
from dkit.distill.images import iter_images, load_image
from dkit.distill.students.clip_embed.model import _backbone_mean_std
from dkit.edge.bundle.manifest import Preprocess
from dkit.edge.infer.preprocess import center_crop, normalize, resize, shortest_side
from dkit.edge.infer.preprocess import preprocess as edge_preprocess

log = logging.getLogger(__name__)

MEMORY_BUDGET = 1 << 30  # bytes of decoded training images kept in memory; above it images are decoded per epoch


# ------------------------------------------------------------------------------------------ preprocessing


def preprocess_spec(kit) -> Preprocess:
    """The student's input transform as data: what the bundle manifest carries to the device (checkpoints and
    student.json keep it as its `to_dict()`)."""
    mean, std = _backbone_mean_std(kit.student.model)
    size = kit.student.imgsz
    return Preprocess(
        # shorter side to `size`, longer side int(long * size / short) (dkit.edge.infer.preprocess)
        "shortest", (size, size), size_is_int=True,
        crop="center",  # size x size at (round((H - size) / 2), round((W - size) / 2))
        interpolation="area",  # cv2.INTER_AREA (shrinking and enlarging alike)
        scale=1 / 255,  # uint8 -> [0, 1], then (x - mean) / std per channel
        mean=tuple(mean), std=tuple(std), layout="NCHW", channels="RGB", extra={"dtype": "float32"},
    )


def resize_shortest(rgb: np.ndarray, spec: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with min(h, w) == spec.size[0]: the device's resize
    (dkit.edge.infer.preprocess)."""
    return shortest_side(rgb, spec.size[0], spec.interpolation)


def preprocess(rgb: np.ndarray, spec: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) float32: the exact transform the device repeats (dkit.edge.infer.preprocess)."""
    return edge_preprocess(rgb, spec)[0][0]


def _augment(rgb: np.ndarray, spec: Preprocess, rng: np.random.Generator) -> np.ndarray:
    """Training view of an (H, W, 3) uint8 image at its source resolution: a random crop chosen in source pixels,
    then one resize to size x size with the device's interpolation (like the device's single resize, never a
    shrink, crop and enlarge), a flip and a little jitter."""
    size = spec.size[0]
    h, w = rgb.shape[:2]
    for _ in range(10):  # torchvision's RandomResizedCrop, mild: the target is the uncropped image's embedding
        area = h * w * rng.uniform(0.5, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch = cw = min(h, w)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = resize(rgb[top : top + ch, left : left + cw], (size, size), spec.interpolation)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    x = crop.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.9, 1.1) + x.mean() * rng.uniform(0.9, 1.1)  # contrast, brightness
    return normalize(np.clip(x + 0.5, 0, 255).astype(np.uint8), spec)


# ------------------------------------------------------------------------------------------ records


def labelled_records(run_dir: Path) -> list[LabelRecord]:
    """Labelled images with a split (train or val), in file order."""
    return RunDir(run_dir).usable_records()


def pool_records(run_dir: Path, held_out: list[LabelRecord]) -> list[LabelRecord]:
    """The unlabeled pool's images (labels/pool.jsonl, dkit.distill.pool) that the student trains on as well; an
    image identical to a held-out one, or within the split's `near_duplicate_bits` pHash bits of one, is never
    among them (dkit label leaves those out; checked again here from each record's `phash` against the held-out
    images' hashes, which the split's reduced decode takes again: a few, cheap)."""
    val = {r.sha256 for r in held_out}
    pool = RunDir(run_dir).pool_records()
    kept = [r for r in pool if r.sha256 not in val and r.skipped is None]
    if len(kept) < len(pool):
        log.warning("%d pool images are held-out images or unreadable: left out of training", len(pool) - len(kept))
    return _not_near_held_out(kept, held_out, run_dir)


def _not_near_held_out(pool: list[LabelRecord], held_out: list[LabelRecord], run_dir: Path) -> list[LabelRecord]:
    """The pool images not within the split's near-duplicate bits (labels/split.json) of a held-out image, by the
    `phash` dkit label stored in their records (labels made before it was stored are not checked)."""
    from dkit.distill.split import image_hashes, near_any, read_summary

    hashes = [_stored_phash(r.extra.get("phash")) for r in pool]
    if not held_out or all(h is None for h in hashes):
        return pool
    summary = read_summary(RunDir(run_dir).labels)
    if summary is None or summary.near_duplicate_bits < 0:
        return pool
    near = near_any(hashes, image_hashes(held_out), summary.near_duplicate_bits)
    kept = [r for r, n in zip(pool, near, strict=True) if not n]
    if len(kept) < len(pool):
        log.warning("%d pool images are within %d pHash bits of a held-out image: left out of training",
                    len(pool) - len(kept), summary.near_duplicate_bits)
    return kept


def _stored_phash(value) -> int | None:
    """A record's `phash` (16 hex digits) as an int; None where it is missing or not a 64-bit hex hash."""
    if not isinstance(value, str) or len(value) != 16:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def teacher_embeddings(records: list[LabelRecord], teacher, run_dir: Path) -> np.ndarray:
    """(N, D) the teacher's normalised embeddings of the records' images, from the teacher cache."""
    out = []
    with TeacherCache(RunDir(run_dir).cache_db) as cache:
        for rec in records:
            raw = cache.get(teacher.cache_key, rec.sha256)
            if raw is None or "embedding" not in raw:
                raise UsageError(f"the teacher cache has no embedding of {rec.image} for {teacher.id}: "
                                 "the labels were made by another teacher; run dkit label again")
            out.append(raw["embedding"].astype(np.float32))
    emb = np.stack(out) if out else np.zeros((0, teacher.text.shape[1]), np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def decode_record(rec: LabelRecord) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a record's source image, as the teacher saw it."""
    src = Path(rec.source)
    return _checked(load_image(src, src.parent), rec)


def _checked(li, rec: LabelRecord) -> np.ndarray:
    if not li.ok:
        raise DkitError(f"{rec.source}: {li.skipped} (it was readable when labelled: run dkit label again)")
    if li.sha256 != rec.sha256:
        raise DkitError(f"{rec.source} changed since it was labelled: run dkit label again")
    return li.rgb


def iter_decoded(records: list[LabelRecord], workers: int) -> Iterator[np.ndarray]:
    """The records' images in order, decoded in `workers` processes (in this one for a few images)."""
    if not records:
        return
    paths = [Path(r.source) for r in records]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    workers = 0 if len(records) < 64 else workers  # a process pool costs more than it saves on a few images
    for li, rec in zip(iter_images(paths, root, workers=workers), records, strict=True):
        yield _checked(li, rec)


# ------------------------------------------------------------------------------------------ datasets


class _Images(torch.utils.data.Dataset):
    """(input (3, S, S), target (D,)) pairs: augmented views for training, `preprocess` for validation.

    `memory`: the images as uint8, at their source resolution (train: each view is cropped from the source pixels
    and resized once) or already preprocessed to size x size (val); None: decode per item.
    """

    def __init__(self, records: list[dict], targets: np.ndarray, spec: Preprocess, *, train: bool, seed: int,
                 memory: list[np.ndarray] | None):
        self.records, self.targets, self.spec, self.train, self.seed = records, targets, spec, train, seed
        self.memory, self.epoch = memory, 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memory is not None:
            pixels = self.memory[i]
        else:
            pixels = decode_record(self.records[i])
            pixels = pixels if self.train else _shrink(pixels, self.spec)
        if self.train:  # the same view for the same (seed, epoch, image), whichever worker makes it
            x = _augment(pixels, self.spec, np.random.default_rng((self.seed, self.epoch, i)))
        else:
            x = normalize(pixels, self.spec)
        return torch.from_numpy(x), torch.from_numpy(self.targets[i])


def _shrink(rgb: np.ndarray, spec: Preprocess) -> np.ndarray:
    """A held-out image as the device feeds it (shortest side to size, centre crop), uint8."""
    return np.ascontiguousarray(center_crop(resize_shortest(rgb, spec), spec.size[0]))


def _datasets(train_recs, val_recs, train_t, val_t, spec: Preprocess, seed, workers) -> tuple[_Images, _Images,
                                                                                               bool]:
    size = spec.size[0]
    # training images stay at their source resolution (each view is one resize from them), held-out ones at size
    source = sum(r.width * r.height * 3 if r.width and r.height else int(1.5 * size * size * 3) for r in train_recs)
    in_memory = source + len(val_recs) * size * size * 3 <= MEMORY_BUDGET
    train_mem = val_mem = None
    if in_memory:
        train_mem = [np.ascontiguousarray(rgb) for rgb in iter_decoded(train_recs, workers)]
        val_mem = [_shrink(rgb, spec) for rgb in iter_decoded(val_recs, workers)]
    else:
        log.info("%d images at %d px exceed the %d MiB memory budget: decoding them every epoch",
                 len(train_recs) + len(val_recs), size, MEMORY_BUDGET >> 20)
    return (_Images(train_recs, train_t, spec, train=True, seed=seed, memory=train_mem),
            _Images(val_recs, val_t, spec, train=False, seed=seed, memory=val_mem), in_memory)


def _loader(ds: _Images, batch: int, *, workers: int, epoch: int = 0, seed: int = 0, rank: int = 0,
            world: int = 1) -> torch.utils.data.DataLoader:
    """`batch` images a step; with world > 1 (DDP) the training views are this rank's disjoint shard of the set
    (DistributedSampler, seeded, reshuffled per epoch; the shards padded to one length, so every rank runs the
    same number of steps)."""
    ds.epoch = epoch
    sampler = None
    if ds.train and world > 1:
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    elif ds.train:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        sampler = torch.utils.data.RandomSampler(ds, generator=generator)
    drop_last = ds.train and len(sampler) > batch  # no batch of one in train mode (BatchNorm)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                       drop_last=drop_last)
