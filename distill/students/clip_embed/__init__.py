"""clip-embed student: a small image encoder trained to reproduce the CLIP teacher's image embeddings.

    from dkit.core.store import ModelStore
    from dkit.distill.students.clip_embed import evaluate, train

    summary = train(kit, run_dir, store=ModelStore())     # -> run_dir/student/
    report = evaluate(kit, run_dir, store=ModelStore())   # the eval.json dict, held-out split only

The student is `timm.create_model(kit.student.model, pretrained=False, num_classes=0)` (pooled features)
plus a linear projection to the teacher's embedding dimension, L2-normalised; so on the device any text
prompt is scored by a dot product with the teacher's text embedding of it (shipped in the bundle), the
kiosk judge. It starts from scratch (seeded init), or with `student.pretrained: FILE` its backbone starts from
that timm checkpoint in the model store (found offline by file name; its sha256 is part of what a resumed run
must match, and student.json records it).

Targets are the teacher's normalised image embeddings of every labelled image (`labels/labels.jsonl`,
split train or val), read from the teacher cache `dkit label` filled; the teacher is built here only for its
identity and text embeddings, it never sees an image during training.

Loss per image (s, t: student and teacher embeddings; P: the kit's prompt embeddings, ontology classes,
background prompts and judge prompts; k: teacher.logit_scale):

    (1 - cos(s, t))  +  kd_weight * KL(softmax(k t P') || softmax(k s P'))

The cosine term pulls the whole embedding onto the teacher's; the KL term (teacher's prompt distribution as
the target, as in Hinton et al.) weights the directions the device actually scores. kd_weight = 1 by default:
both terms are O(1) at the start and the KL term vanishes as the cosine approaches 1.

Preprocessing is data (`preprocess_spec`) implemented with OpenCV/numpy only (`preprocess`), so the edge
runtime repeats it exactly without torch. A training view is a random crop chosen in the source image's
pixels and resized once to the input size (as the device resizes once), then a horizontal flip and a little
brightness/contrast jitter and the same normalisation; evaluation uses `preprocess`.

Optimiser and schedule: AdamW (no weight decay on norms and biases), linear warm-up (one epoch at most)
then cosine decay to 1% of lr, per step; `student.epochs` epochs of `student.batch` images; early stopping
on the held-out cosine after `student.patience` epochs without improvement. `student.train_args` may set:
lr (2e-3), weight_decay (0.05), kd_weight (1.0), seed (0), workers (decoding processes; 0: one per spare core).

Small sets are decoded once and kept in memory as uint8 images (training images at their source resolution,
held-out ones preprocessed to the input size); above MEMORY_BUDGET bytes they are decoded again every epoch by
DataLoader workers, so memory stays bounded.

`evaluate` measures on the held-out split: cosine to the teacher's embedding, the Spearman rank correlation
per prompt of prompt scores across images, top-1 class agreement and (judge kits) moderation agreement, each
also for the same architecture untrained (the baseline training must beat); parameters, GFLOPs (torch's
FlopCounterMode: a multiply-add is 2) and the median single-image latency (preprocessing included) of the
student and of the teacher's image tower, on the same first TIMING_IMAGES held-out images.

Writes run_dir/student/: weights/best.pt and weights/last.pt (last.pt: model, optimizer, schedule, epoch,
history: what resume needs), student.json, results.csv, curves.png, train.log, each replaced atomically.
An interrupted run resumes from last.pt with the same results; a finished one is not trained again; other
settings or labels than last.pt's are refused rather than mixed in; `restart=True` clears the folder first.
"""

from __future__ import annotations

from dkit.distill.students.clip_embed.data import (
    MEMORY_BUDGET,
    _augment,
    _datasets,
    _Images,
    _loader,
    decode_record,
    iter_decoded,
    labelled_records,
    preprocess,
    preprocess_spec,
    resize_shortest,
    teacher_embeddings,
)
from dkit.distill.students.clip_embed.evaluation import TIMING_IMAGES, WARMUP_PASSES, evaluate
from dkit.distill.students.clip_embed.model import KIND, EmbedStudent, build_student, load_student
from dkit.distill.students.clip_embed.outputs import RESULTS_COLUMNS
from dkit.distill.students.clip_embed.prompts import moderation_agreement, prompt_embeddings
from dkit.distill.students.clip_embed.training import (
    CURVES_EVERY_S,
    DEFAULT_ARGS,
    _loss,
    _run_epoch,
    _train_args,
    train,
)

# The package's names, one module per concept (model, data, prompts, training, outputs, evaluation). These are
# copies: to patch a name, patch the module that reads it (clip_embed.data.MEMORY_BUDGET,
# clip_embed.training._run_epoch); patching it here changes nothing.
__all__ = [
    "CURVES_EVERY_S", "DEFAULT_ARGS", "KIND", "MEMORY_BUDGET", "RESULTS_COLUMNS", "TIMING_IMAGES", "WARMUP_PASSES",
    "EmbedStudent", "build_student", "decode_record", "evaluate", "iter_decoded", "labelled_records", "load_student",
    "moderation_agreement", "preprocess", "preprocess_spec", "prompt_embeddings", "resize_shortest",
    "teacher_embeddings", "train",
    "_Images", "_augment", "_datasets", "_loader", "_loss", "_run_epoch", "_train_args",
]
