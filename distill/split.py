"""The train/val split of `dkit label`: seeded, order-independent, and never cutting a group of related images.

    from dkit.distill.split import assign_split, read_summary

    records, summary = assign_split(records, kit)    # every usable record gets split "train" or "val"
    summary = read_summary(run.labels)               # labels/split.json: how the held-out split was formed

A group is a set of images that are not independent of each other, so a held-out figure measured on one of them
while another is trained on would be optimistic:
- byte-identical files (one sha256);
- frames of one video (`LabelRecord.video`: the video, and any other video a shared frame also came from);
- near-duplicates: images whose 64-bit perceptual hashes (dkit.edge.images.phash) are within
  `data.split_near_duplicate` bits (default dkit.edge.images.phash.NEAR = 6: a re-encode, a resize, a small shift;
  different photos are at least 14 bits apart there); -1 turns this grouping off.
Groups are joined transitively (an image near two others joins both). Each group is ranked by a hash of
(`data.seed`, the smallest sha256 in it), which depends on neither the order nor the names of the files, and
groups are held out whole in that order while that brings the held-out count closer to `data.val`; so the
held-out count can differ from `data.val` by less than the size of one group (the summary says by how much).
Only when every usable image is in one group (a kit of one video) is that group cut, with a warning.

The perceptual hash is taken from a reduced decode of each image (OpenCV's JPEG scaling where the image is
large, at least 128 pixels on the short side), in a thread pool; a file OpenCV cannot read goes through the
kit's own decoder (dkit.distill.images).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from dkit.core.errors import UsageError
from dkit.core.files import atomic_write
from dkit.core.records import LabelRecord
from dkit.edge.images.phash import phash

log = logging.getLogger(__name__)

SUMMARY_FILE = "split.json"  # under labels/: how the split was formed (read by dkit eval for eval.md)
_HASH_SIDE = 128  # a reduced decode keeps at least this many pixels on the short side (the hash uses 32)
_PAIR_CELLS = 4_000_000  # hash pairs compared per numpy step (bounds the memory of the all-pairs search)


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    """How the held-out split was formed: what eval.md and eval.json report beside the held-out figures."""

    method: str  # "group": identical bytes, one video, pHash near-duplicates kept on one side
    seed: int  # data.seed
    asked: int  # held-out images data.val asked for (a share already turned into a count)
    val_images: int
    train_images: int
    groups: int  # groups among the usable images (a group of one is an independent image)
    val_groups: int
    grouped_images: int  # images in a group of more than one
    largest_group: int
    near_duplicate_bits: int  # data.split_near_duplicate (-1: off)
    reasons: dict[str, int]  # images joined to another by: identical, video, near_duplicate
    cut_groups: int = 0  # 1 only when all the usable images form one group and it had to be cut

    def to_dict(self) -> dict:
        """The summary as plain JSON values (labels/split.json, eval.json `held_out`)."""
        return dataclasses.asdict(self)

    def sentence(self) -> str:
        """One line for eval.md: how the held-out images were chosen."""
        near = ("pHash near-duplicates off" if self.near_duplicate_bits < 0
                else f"pHash near-duplicates within {self.near_duplicate_bits} bits")
        text = (f"{self.val_images} held-out and {self.train_images} training images, split by group (identical "
                f"files, frames of one video, {near}) with seed {self.seed}: {self.val_groups} of {self.groups} "
                f"groups held out whole ({self.grouped_images} images in groups of two or more, the largest "
                f"{self.largest_group}); data.val asked for {self.asked}.")
        if self.cut_groups:
            text += (" Every image was in one group, so that group was cut: the held-out figures are optimistic "
                     "(add images from other videos or scenes).")
        return text


def assign_split(records: list[LabelRecord], kit) -> tuple[list[LabelRecord], SplitSummary | None]:
    """Each usable record with split "train" or "val" (the module docstring), and how the split was formed
    (None when no image can be held out: one usable image)."""
    # A classifier trains on labelled images only; a clip-embed student reproduces the teacher's embedding
    # of every image it saw, abstained ones too (they are left out of the class folders, not of the split).
    embed = kit.student.spec.task == "embed"
    usable = [i for i, r in enumerate(records)
              if r.skipped is None and (embed or not (kit.task == "classify" and r.abstained))]
    if not usable:
        raise UsageError("the teacher abstained on every image: nothing to train on (see report.html)")
    val = kit.data.val
    n_val = val if isinstance(val, int) else round(val * len(usable))
    n_val = min(max(n_val, 1 if len(usable) > 1 else 0), len(usable) - 1)
    if isinstance(val, int) and val > n_val:
        log.warning("data.val asks for %d held-out images but only %d can be held out", val, n_val)
    bits = kit.data.split_near_duplicate
    chosen = [records[i] for i in usable]
    hashes = image_hashes(chosen, workers=kit.data.workers) if bits >= 0 else [None] * len(chosen)
    groups, reasons = find_groups(chosen, hashes, bits)
    in_val, cut = _choose(groups, [r.sha256 for r in chosen], kit.data.seed, n_val)
    split = {usable[k]: "val" if k in in_val else "train" for k in range(len(chosen))}
    out = [dataclasses.replace(r, split=split[i]) if i in split else r for i, r in enumerate(records)]
    if n_val == 0:
        return out, None
    sizes = Counter(groups)
    summary = SplitSummary(
        method="group", seed=kit.data.seed, asked=n_val, val_images=len(in_val), train_images=len(chosen) - len(in_val),
        groups=len(sizes), val_groups=len({groups[k] for k in in_val}),
        grouped_images=sum(n for n in sizes.values() if n > 1), largest_group=max(sizes.values()),
        near_duplicate_bits=bits, reasons=reasons, cut_groups=int(cut))
    log.info("split: %s", summary.sentence())
    if summary.val_images != n_val:
        log.info("held out %d images instead of data.val's %d: groups are held out whole", summary.val_images, n_val)
    return out, summary


def write_summary(labels_dir: Path, summary: SplitSummary | None) -> None:
    """labels/split.json (nothing when no image was held out)."""
    if summary is not None:
        atomic_write(Path(labels_dir) / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2) + "\n")


def read_summary(labels_dir: Path) -> SplitSummary | None:
    """labels/split.json as written by dkit label; None for labels made before it existed."""
    path = Path(labels_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return SplitSummary(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: not a split summary ({e}); run dkit label again") from e


# ------------------------------------------------------------------------------------------ groups


def find_groups(records: list[LabelRecord], hashes: list[int | None], bits: int) -> tuple[list[int], dict[str, int]]:
    """(a group id per record, images joined by each reason): identical bytes, one video, pHash within `bits`."""
    parent = list(range(len(records)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    reasons = {"identical": 0, "video": 0, "near_duplicate": 0}

    def join(a: int, b: int, why: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            reasons[why] += 1

    first: dict[tuple[str, str], int] = {}
    for k, rec in enumerate(records):
        keys = [("identical", rec.sha256)]
        if rec.video is not None:
            keys += [("video", rec.video["file"])] + [("video", v["file"]) for v in rec.video.get("also") or ()]
        for key in keys:
            if key in first:
                join(first[key], k, key[0])
            else:
                first[key] = k
    if bits >= 0:
        for a, b in near_pairs(hashes, bits):
            join(a, b, "near_duplicate")
    return [root(k) for k in range(len(records))], reasons


def near_pairs(hashes: list[int | None], bits: int) -> list[tuple[int, int]]:
    """Index pairs (a < b) whose hashes are within `bits` bits; a None hash pairs with nothing."""
    known = [k for k, h in enumerate(hashes) if h is not None]
    if len(known) < 2:
        return []
    values = np.array([hashes[k] for k in known], dtype=np.uint64)  # (n,)
    rows = max(1, _PAIR_CELLS // len(values))
    pairs = []
    for top in range(0, len(values), rows):
        block = _popcount(values[top : top + rows, None] ^ values[None, :])  # (rows, n) differing bits
        a, b = np.nonzero(block <= bits)
        a += top
        keep = a < b
        pairs += [(known[i], known[j]) for i, j in zip(a[keep].tolist(), b[keep].tolist(), strict=True)]
    return pairs


def near_any(hashes: list[int | None], against: list[int | None], bits: int) -> list[bool]:
    """For each of `hashes`, whether it is within `bits` bits of any of `against` (a None hash is near nothing):
    the near-duplicate rule of the split applied between two sets (a large pool against the few held-out images),
    vectorised in blocks of at most _PAIR_CELLS pairs."""
    out = [False] * len(hashes)
    ref = np.array([h for h in against if h is not None], dtype=np.uint64)  # (m,)
    known = [k for k, h in enumerate(hashes) if h is not None]
    if bits < 0 or not len(ref) or not known:
        return out
    values = np.array([hashes[k] for k in known], dtype=np.uint64)  # (n,)
    rows = max(1, _PAIR_CELLS // len(ref))
    for top in range(0, len(values), rows):
        block = _popcount(values[top : top + rows, None] ^ ref[None, :])  # (rows, m) differing bits
        for i in np.flatnonzero((block <= bits).any(axis=1)).tolist():
            out[known[top + i]] = True
    return out


_BITS8 = np.array([bin(v).count("1") for v in range(256)], np.uint8)  # bits set in each byte value


def _popcount(x: np.ndarray) -> np.ndarray:
    """Bits set in each element of a uint64 array (numpy's bitwise_count where it has one: numpy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = np.ascontiguousarray(x)
    return _BITS8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def image_hashes(records: list[LabelRecord], workers: int = 0) -> list[int | None]:
    """The perceptual hash (dkit.edge.images.phash) of each record's image; None where it cannot be read any more."""
    threads = max(1, min(len(records), workers or os.cpu_count() or 1, 8))
    if threads == 1:
        return [_hash(r) for r in records]
    with ThreadPoolExecutor(threads) as pool:  # OpenCV decodes without the GIL
        return list(pool.map(_hash, records))


def _hash(rec: LabelRecord) -> int | None:
    return _file_hash(rec.source, rec.sha256, min(rec.width, rec.height), rec.image)


@functools.lru_cache(maxsize=1 << 16)
def _file_hash(source: str, sha256: str, short_side: int, name: str) -> int | None:
    """The hash of one file's content (kept per process: a relabel or another seed hashes nothing again)."""
    src = Path(source)
    reduce = next((f for f in (8, 4, 2) if short_side >= f * _HASH_SIDE), 1)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    bgr = cv2.imread(str(src), flag)
    if bgr is not None:
        return phash(np.ascontiguousarray(bgr[..., ::-1]))
    from dkit.distill.images import load_image  # formats OpenCV does not read (GIF, 16-bit, ...)

    li = load_image(src, src.parent)
    if not li.ok:
        log.info("no perceptual hash for %s (%s): grouped by its bytes only", name, li.skipped)
        return None
    return phash(li.rgb)


# ------------------------------------------------------------------------------------------ assignment


def _choose(groups: list[int], shas: list[str], seed: int, n_val: int) -> tuple[set[int], bool]:
    """(the held-out record indices, whether a group had to be cut): whole groups in seeded rank order."""
    members: dict[int, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    total = len(groups)

    def rank(ks: list[int]) -> str:
        return hashlib.sha256(f"{seed}:{min(shas[k] for k in ks)}".encode()).hexdigest()

    ranked = sorted(members.values(), key=rank)
    if n_val == 0:
        return set(), False
    if len(ranked) == 1:  # one group: nothing independent to hold out; cut it as the old split did (by content)
        log.warning("all %d usable images form one group (identical, one video or near-duplicates): the held-out "
                    "images are cut from it, so the held-out figures are optimistic", total)
        order = sorted(range(total), key=lambda k: (hashlib.sha256(f"{seed}:{shas[k]}".encode()).hexdigest(), k))
        return set(order[:n_val]), True
    val: set[int] = set()
    for ks in ranked:
        if len(val) >= n_val:
            break
        after = len(val) + len(ks)
        if after < total and abs(after - n_val) <= abs(len(val) - n_val):  # closer to data.val, train kept
            val.update(ks)
    if not val:  # every group is more than twice the asked count: hold out the smallest (first ranked of them)
        val.update(min(ranked, key=len))
    return val, False
