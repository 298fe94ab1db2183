"""The `clip-embed` student kind: a small image encoder that reproduces a CLIP teacher's image embeddings (the
kiosk judge). Training and evaluation: dkit.distill.students.clip_embed; export: dkit.export.judge.
"""

from __future__ import annotations

from dkit.core.student_kinds.spec import NonNegative, NonNegativeInt, StudentKind, TrainArgs


class ClipEmbedTrainArgs(TrainArgs):
    """`student.train_args` of a clip-embed student (dkit.distill.students.clip_embed.training); no other key.

    Example: `train_args: {lr: 0.001, kd_weight: 0.5}`.
    """

    lr: NonNegative = 2e-3  # AdamW's peak learning rate (warm-up, then cosine decay to 1% of it)
    weight_decay: NonNegative = 0.05  # not on norms and biases
    kd_weight: NonNegative = 1.0  # weight of the KL term on the kit's prompt logits
    seed: NonNegativeInt = 0  # the model's initialisation and the order of the training images
    workers: NonNegativeInt = 0  # image-decoding processes; 0: one per spare core


CLIP_EMBED = StudentKind(
    key="clip-embed", task="embed", config=ClipEmbedTrainArgs,
    train="dkit.distill.students.clip_embed", exporter="dkit.export.judge:export_clip_embed",
    ncnn="dkit.export.ncnn:convert_clip_embed",
    teachers=("clip",), model_file=False, multi_gpu="torchrun", unlabeled_pool=True,
)
