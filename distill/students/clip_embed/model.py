"""The clip-embed student network: `timm.create_model(backbone, pretrained=False, num_classes=0)` (pooled
features) plus a linear projection to the teacher's embedding dimension, L2-normalised; built from a seed,
the backbone from scratch or, with `student.pretrained`, from a timm checkpoint file in the model store
(offline: nothing is downloaded), and loaded back from best.pt or last.pt.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dkit.core.errors import UsageError
from dkit.edge.bundle.manifest import Preprocess

KIND = "clip-embed"
_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")  # keys a training script nests the weights under
_SHOWN_KEYS = 5  # missing/unexpected keys listed in an error


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


def build_student(backbone: str, dim: int, seed: int = 0, checkpoint: Path | None = None) -> EmbedStudent:
    """The untrained student, the same weights for the same seed (global RNG left untouched); with `checkpoint`
    (a timm checkpoint of `backbone`), the backbone's weights are that file's, the projection still seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EmbedStudent(backbone, dim)
    if checkpoint is not None:
        load_backbone(model.backbone, backbone, Path(checkpoint))
    return model


def load_backbone(net: nn.Module, backbone: str, checkpoint: Path) -> None:
    """Load a timm checkpoint (.safetensors, or a torch file of tensors) into the pooled-feature backbone, strictly:
    a missing or unexpected key or a shape that differs is a UsageError naming the file and the keys. The
    classifier's weights (the checkpoint's num_classes head, which a pooled-feature model lacks) are dropped."""
    state = _read_state(checkpoint)
    own = net.state_dict()
    head = net.pretrained_cfg.get("classifier") if isinstance(getattr(net, "pretrained_cfg", None), dict) else None
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    state = {k: v for k, v in state.items()
             if k in own or not any(k == h or k.startswith(h + ".") for h in heads)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (the model's is {tuple(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {what}: {', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''}"
                 for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("keys of another shape", shapes)) if keys]
        raise UsageError(f"{checkpoint} (student.pretrained) is not a checkpoint of the timm backbone {backbone}: "
                         + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def _read_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    try:
        if checkpoint.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(checkpoint))
        else:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every unreadable file means the same to the user
        raise UsageError(f"cannot read {checkpoint} (student.pretrained) as a checkpoint: {e}") from e
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{checkpoint} (student.pretrained) holds no mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_student(weights: Path) -> tuple[EmbedStudent, dict]:
    """(model in eval mode on the CPU, checkpoint dict) from best.pt or last.pt; the checkpoint's `preprocess` (kept
    in the file as its JSON form) read back as a Preprocess."""
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_student(ckpt["backbone"], ckpt["dim"], ckpt.get("seed", 0))
    model.load_state_dict(ckpt["model"])
    return model.eval(), {**ckpt, "preprocess": Preprocess.from_dict(ckpt["preprocess"])}


def _backbone_mean_std(name: str) -> tuple[list[float], list[float]]:
    """timm's normalisation for the backbone (ImageNet's for almost all), so pretrained weights would fit."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    mean = cfg.mean if cfg is not None and cfg.mean else (0.485, 0.456, 0.406)
    std = cfg.std if cfg is not None and cfg.std else (0.229, 0.224, 0.225)
    return [float(v) for v in mean], [float(v) for v in std]
