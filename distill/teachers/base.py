"""What every teacher provides: `infer` (expensive, its outputs cached per image) and `decide` (cheap).

Splitting the two means a rerun with other thresholds, prompts or abstain settings reuses the cached
teacher outputs, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import numpy as np

from dkit.edge.bundle.hashing import sha256_file

Raw = dict[str, np.ndarray]  # one image's teacher outputs, as stored in the cache


@dataclasses.dataclass
class Decision:
    """The labels a teacher gives one image."""

    class_ids: np.ndarray  # (N,) int, ontology indices
    confidences: np.ndarray  # (N,) float in [0, 1]
    boxes: np.ndarray | None = None  # (N, 4) xyxy pixels; None for image-level (classification) labels
    topk: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # image-level class scores, best first
    similarity: float | None = None  # CLIP: cosine of the best class (to calibrate the abstain floor)
    abstain_reason: str | None = None  # set when the teacher declines to label the image


class Teacher(ABC):
    """A labeling teacher for one kit."""

    id: str  # human-readable identity written into every label record
    cache_key: str  # identity of everything that changes `infer`'s outputs (weights, sizes, proposer)
    random: bool = False  # an untrained teacher (tests only)

    @abstractmethod
    def infer(self, images: list[np.ndarray]) -> list[Raw]:
        """Run the model on a batch of (H, W, 3) uint8 RGB images."""

    @abstractmethod
    def decide(self, raw: Raw, shape: tuple[int, int]) -> Decision:
        """Turn one image's raw outputs (image of `shape` (H, W)) into labels."""


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda:0' when a GPU is present, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def file_digest(path: str, length: int = 16) -> str:
    """Short sha256 of a weights file, so the cache notices when weights change under the same name."""
    return sha256_file(path)[:length]


def class_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the (N, 4) xyxy `boxes` that class-wise NMS keeps, best score first (torchvision's
    `batched_nms`: a box suppresses only boxes of its own class overlapping it by more than `iou`). Teachers
    run it on the kit's classes, after any mapping of their own classes onto the ontology."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(np.ascontiguousarray(boxes)).float(),
                       torch.from_numpy(np.ascontiguousarray(scores)).float(),
                       torch.from_numpy(np.ascontiguousarray(classes)).long(), iou)
    return keep.numpy()
