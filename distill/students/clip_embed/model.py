"""The clip-embed student network: `timm.create_model(backbone, pretrained=False, num_classes=0)` (pooled
features) plus a linear projection to the teacher's embedding dimension, L2-normalised; built from a seed
(ImageNet weights are not reachable offline) and loaded back from best.pt or last.pt.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

KIND = "clip-embed"


class EmbedStudent(nn.Module):
    """timm backbone (pooled features) -> linear -> L2-normalised (N, dim) embedding."""

    def __init__(self, backbone: str, dim: int):
        import timm

        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.proj = nn.Linear(features, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, dim)
        return F.normalize(self.proj(self.backbone(x)), dim=-1)


def build_student(backbone: str, dim: int, seed: int = 0) -> EmbedStudent:
    """The untrained student, the same weights for the same seed (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmbedStudent(backbone, dim)


def load_student(weights: Path) -> tuple[EmbedStudent, dict]:
    """(model in eval mode on the CPU, checkpoint dict) from best.pt or last.pt."""
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_student(ckpt["backbone"], ckpt["dim"], ckpt.get("seed", 0))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def _backbone_mean_std(name: str) -> tuple[list[float], list[float]]:
    """timm's normalisation for the backbone (ImageNet's for almost all), so pretrained weights would fit."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    mean = cfg.mean if cfg is not None and cfg.mean else (0.485, 0.456, 0.406)
    std = cfg.std if cfg is not None and cfg.std else (0.229, 0.224, 0.225)
    return [float(v) for v in mean], [float(v) for v in std]
