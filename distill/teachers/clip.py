"""CLIP teacher: zero-shot labels from text prompts (open_clip: any model + pretrained tag or checkpoint).

Each class's text embedding is a prompt ensemble: every prompt in every template ("a photo of {}."),
normalised, averaged, normalised again. Background prompts ("a blank image") each get their own
embedding and compete with the classes, and so does `teacher.abstain.floor` when it is set: a "none"
candidate whose cosine is the floor. Because a softmax over the candidates always picks one, the
teacher abstains (label "none") when a background prompt wins, when the floor wins (the best class's
cosine is below it), or when the best class's probability leads the runner-up by less than
`teacher.abstain.margin`. The winning class's probability is the label's confidence, so one class
with a floor gets confidences that grow with its cosine above the floor (not a constant 1.0); a kit
where nothing can win but a class is refused by the kit's validation (dkit.core.kit.Abstain).

Classification kits get one label per image. Detection kits get boxes from a proposer (`yolo`:
class-agnostic Ultralytics boxes; `sliding`: multi-scale windows) whose crops CLIP verifies with the
same rule, then class-wise NMS and the min-size filter. A crop is square and holds the whole box
(`teacher.proposer.crop`: `square` context or `letterbox`, dkit.distill.proposers.crop_boxes), so
CLIP's own resize-and-centre-crop never cuts the top and bottom off a standing person.

What is cached per image (`infer`): the normalised image embedding, and for detection the proposals
and their crop embeddings. Prompts and thresholds are applied in `decide`, so changing them reruns
nothing expensive. The embeddings are also what a clip-embed student learns to reproduce.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dkit.core.errors import require
from dkit.core.kit import RANDOM
from dkit.distill.proposers import build_proposer, crop_boxes
from dkit.distill.teachers.base import Decision, Raw, Teacher, class_nms, resolve_device
from dkit.distill.teachers.clip_models import ClipModel, ClipModelKey, ClipModels
from dkit.edge.bundle.hashing import sha256_file

log = logging.getLogger(__name__)

# The last two built models in this process and their prompt embeddings: another teacher of the same kit in the
# same process (label, then train, eval, export) reuses them instead of loading the weights again.
MODELS = ClipModels(size=2)


class ClipTeacher(Teacher):
    """Zero-shot labels from an open_clip model: prompt ensembles, background prompts, the abstain rule."""

    def __init__(self, kit, store):
        open_clip = require("open_clip", what="the clip teacher", extra="distill")
        torch = require("torch", what="the clip teacher", extra="distill")
        cfg = self.cfg = kit.teacher
        self.random = cfg.is_random
        self.task = kit.task
        self.device = resolve_device(cfg.device)

        checkpoint = store.clip_checkpoint(cfg.model, cfg.pretrained)
        # the kit made checkpoint paths absolute: anything else but 'random' is an open_clip tag, whose config
        # (QuickGELU, mean/std, resize mode) must travel with the weights when they load from a store file
        is_tag = not self.random and not Path(cfg.pretrained).is_absolute()
        tag_cfg = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained) if is_tag else {}
        digest = None if self.random or is_tag else sha256_file(checkpoint)
        self.model_key = _model_key(cfg.model, checkpoint, digest, tag_cfg, self.device)
        clip = MODELS.get(self.model_key, lambda: _build(open_clip, torch, cfg.model, checkpoint, tag_cfg, self.device))
        self._clip = clip
        self.model, self.preprocess, self.torch = clip.model, clip.preprocess, torch
        self.tokenizer = clip.tokenizer
        self.logit_scale, self.dim = clip.logit_scale, clip.dim

        names = list(kit.ontology.classes)
        self.class_names = names
        self.text = self.embed_prompts([kit.ontology.classes[n] for n in names])  # (C, D)
        self.background_prompts = list(kit.ontology.background)
        self.background = self.embed_prompts([[p] for p in self.background_prompts])  # (B, D)

        weights = "random-seed0" if self.random else cfg.pretrained if is_tag else digest[:16]  # file_digest's
        self.id = f"clip:{cfg.model}/{cfg.pretrained if not self.random else RANDOM}" + (
            " (UNTRAINED)" if self.random else ""
        )
        self.cache_key = f"clip|{cfg.model}|{weights}"
        self.proposer = None
        if self.task == "detect":
            self.proposer = build_proposer(cfg.proposer, store, self.device)
            self.cache_key += f"|{self.proposer.cache_key}|crop={cfg.proposer.crop}"
        note = kit.abstain_note()
        if note:
            log.warning("%s", note)

    # ------------------------------------------------------------------------------------------ embeddings

    def embed_prompts(self, prompt_sets: list[list[str]]) -> np.ndarray:
        """One embedding per set: every prompt in every template, normalised, averaged, normalised. A set this
        model embedded before in this process (with the same templates) is not embedded again (MODELS)."""
        if not prompt_sets:
            return np.zeros((0, self.dim), np.float32)
        templates = tuple(self.cfg.templates)
        if self.model is not self._clip.model or self.tokenizer is not self._clip.tokenizer:  # replaced: never cached
            out = [self._embed_set(prompts, templates) for prompts in prompt_sets]
        else:
            out = [MODELS.embed(self.model_key, self._clip, (templates, tuple(prompts)),
                                lambda prompts=prompts: self._embed_set(prompts, templates))
                   for prompts in prompt_sets]
        return np.stack(out).astype(np.float32)

    def _embed_set(self, prompts: list[str], templates: tuple[str, ...]) -> np.ndarray:
        """The normalised mean of the normalised embeddings of every prompt in every template."""
        texts = [t.format(p) for p in prompts for t in templates]
        with self.torch.inference_mode():
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            return (mean / mean.norm()).cpu().numpy()

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, D) normalised embeddings of (H, W, 3) uint8 RGB images, through open_clip's own preprocessing."""
        from PIL import Image

        if not images:
            return np.zeros((0, self.dim), np.float32)
        batch = self.torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
        with self.torch.inference_mode():
            emb = self.model.encode_image(batch).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return emb.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------------------------------ teacher

    def infer(self, images: list[np.ndarray]) -> list[Raw]:
        if self.proposer is None:
            return [{"embedding": e} for e in self.embed_images(images)]
        out = []
        for image, (boxes, objectness) in zip(images, self.proposer.propose(images), strict=True):
            crops = crop_boxes(image, boxes, pad=self.cfg.proposer.pad, mode=self.cfg.proposer.crop)
            out.append({
                "embedding": self.embed_images([image])[0],
                "boxes": boxes.astype(np.float32),  # (P, 4) xyxy pixels
                "objectness": objectness.astype(np.float32),  # (P,)
                "crops": self.embed_images(crops),  # (P, D)
            })
        return out

    def scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosines (N, C) to the classes and softmax probabilities (N, C + B [+ 1]) over the candidates:
        the classes, then the background prompts, then the floor when `teacher.abstain.floor` is set."""
        cos = embeddings @ self.text.T  # (N, C)
        parts = [cos, embeddings @ self.background.T]
        if self.cfg.abstain.floor is not None:
            parts.append(np.full((len(cos), 1), self.cfg.abstain.floor, np.float32))
        logits = self.logit_scale * np.concatenate(parts, axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        return cos, prob / prob.sum(axis=1, keepdims=True)

    def verdict(self, cos: np.ndarray, prob: np.ndarray) -> tuple[int, float, str | None]:
        """(class, confidence, abstain reason or None) for one image or crop: the abstain rule."""
        num_classes, num_background = cos.shape[0], len(self.background_prompts)
        best = int(np.argmax(prob))
        floor, margin = self.cfg.abstain.floor, self.cfg.abstain.margin
        if best >= num_classes + num_background:  # the floor won: no class reaches it
            top = int(np.argmax(cos))
            return top, float(prob[top]), f"similarity {cos[top]:.3f} below floor {floor:.3f}"
        if best >= num_classes:
            prompt = self.background_prompts[best - num_classes]
            return -1, float(prob[best]), f"background prompt {prompt!r} scored highest"
        runner_up = float(np.partition(prob, -2)[-2]) if prob.size > 1 else 0.0
        if prob[best] - runner_up < margin:
            return best, float(prob[best]), f"margin {prob[best] - runner_up:.3f} below {margin:.3f}"
        return best, float(prob[best]), None

    def decide(self, raw: Raw, shape: tuple[int, int]) -> Decision:
        cos, prob = self.scores(raw["embedding"][None])
        cos, prob = cos[0], prob[0]
        classes = prob[: len(self.class_names)]
        top = [(int(i), float(classes[i])) for i in np.argsort(-classes, kind="stable")[:5]]
        similarity = float(cos.max()) if cos.size else None
        if "boxes" not in raw:  # image-level outputs: one label for the image
            cls, conf, reason = self.verdict(cos, prob)
            if reason is not None:
                return Decision(np.zeros(0, np.int32), np.zeros(0, np.float32), topk=top, similarity=similarity,
                                abstain_reason=reason)
            return Decision(np.array([cls], np.int32), np.array([conf], np.float32), topk=top, similarity=similarity)
        return self._decide_boxes(raw, top, similarity)

    def _decide_boxes(self, raw: Raw, top: list[tuple[int, float]], similarity: float | None) -> Decision:
        boxes = raw["boxes"]  # (P, 4)
        cls, conf = np.full(len(boxes), -1, np.int32), np.zeros(len(boxes), np.float32)
        if len(boxes):
            cos, prob = self.scores(raw["crops"])
            for i in range(len(boxes)):
                c, p, reason = self.verdict(cos[i], prob[i])
                if reason is None:
                    cls[i], conf[i] = c, p
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
        keep = np.flatnonzero((cls >= 0) & (sides >= self.cfg.min_box))
        keep = keep[class_nms(boxes[keep], conf[keep], cls[keep], self.cfg.iou)][: self.cfg.max_det]
        best = np.zeros(len(self.class_names), np.float32)
        np.maximum.at(best, cls[keep], conf[keep])
        box_top = [(int(i), float(best[i])) for i in np.argsort(-best, kind="stable")[:5] if best[i] > 0]
        return Decision(cls[keep], conf[keep], boxes[keep], topk=box_top or top, similarity=similarity)



# ---------------------------------------------------------------------------------------------- building


def _model_key(model: str, checkpoint: Path | None, digest: str | None, tag_cfg: dict, device: str) -> ClipModelKey:
    """What defines the built model: the name, the weights (seed 0 when random; a checkpoint file by its sha256;
    a tag's store file by its size and modification time), the tag's load config, the device."""
    if checkpoint is None:
        weights = ("random", 0)
    elif digest is not None:
        weights = ("file", str(checkpoint), digest)
    else:
        st = Path(checkpoint).stat()
        weights = ("tag", str(Path(checkpoint).resolve()), st.st_size, st.st_mtime_ns)
    load = tuple((k, _frozen(tag_cfg.get(k))) for k in ("quick_gelu", "mean", "std", "interpolation", "resize_mode"))
    return ClipModelKey(model, weights, load, device)


def _frozen(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def _build(open_clip, torch, model_name: str, checkpoint: Path | None, tag_cfg: dict, device: str) -> ClipModel:
    """Create the open_clip model (random: the same untrained weights every run, seed 0), in eval mode."""
    # the caller's RNG untouched: the seed-0 init of a random model, and a checkpoint's init before its weights load
    with torch.random.fork_rng(devices=[]):
        if checkpoint is None:
            torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=str(checkpoint) if checkpoint is not None else None,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            image_mean=tag_cfg.get("mean"),
            image_std=tag_cfg.get("std"),
            image_interpolation=tag_cfg.get("interpolation"),
            image_resize_mode=tag_cfg.get("resize_mode"),
            device=device,
        )
    model = model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    # the embedding width, read from the output for a probe text: open_clip's classes differ in where the
    # projection lives (CLIP's `text_projection`; CustomTextCLIP's text tower: PE-Core, MobileCLIP, EVA02 have
    # none at the top level), the output is the same everywhere
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["a photo"]).to(device)).shape[-1])
    return ClipModel(model, preprocess, tokenizer, float(model.logit_scale.exp().item()), dim)
