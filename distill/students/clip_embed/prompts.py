"""What the device scores, as the teacher embeds it: the kit's prompts (ontology classes, background prompts,
the judge's prompts) and the moderation verdicts compared between student and teacher.
"""

from __future__ import annotations

import numpy as np

from dkit.edge.manifest import JudgeConfig
from dkit.edge.moderation import agreement as verdict_agreement
from dkit.edge.moderation import moderate


def _judge_prompts(kit) -> list[str]:
    judge = kit.judge
    if judge is None:
        return []
    prompts = ([judge.prompt] if judge.prompt else []) + judge.prompts + judge.text_prompts + judge.unsafe_prompts
    return list(dict.fromkeys(prompts))


def prompt_embeddings(kit, teacher) -> np.ndarray:
    """(P, D) what the device scores: ontology classes, background prompts, then the judge's prompts."""
    parts = [teacher.text, teacher.background]
    judge = _judge_prompts(kit)
    if judge:
        parts.append(teacher.embed_prompts([[p] for p in judge]))
    return np.concatenate([p for p in parts if len(p)], axis=0).astype(np.float32)


def moderation_agreement(student: np.ndarray, teacher: np.ndarray, prompts: np.ndarray, text: np.ndarray,
                         unsafe: np.ndarray, cfg: JudgeConfig) -> float | None:
    """Share of (image, prompt) pairs whose moderation verdict (dkit.edge.moderation, the device's rule with the
    kit's margins: blocked, text or neither) is the same for student and teacher.

    student, teacher: (N, D) normalised image embeddings; prompts: (P, D); text: (T, D) and unsafe: (U, D)
    moderation prompts. None when there is nothing to compare (no images, prompts or moderation prompts).
    """
    if not len(student) or not len(prompts) or not len(text) + len(unsafe):
        return None

    def verdicts(emb: np.ndarray) -> np.ndarray:  # (N, P)
        return moderate(emb @ prompts.T, (emb @ text.T)[:, None, :], (emb @ unsafe.T)[:, None, :], cfg)

    return verdict_agreement(verdicts(student), verdicts(teacher))


def _moderation_sets(kit, teacher) -> tuple[np.ndarray, np.ndarray, np.ndarray, JudgeConfig] | None:
    judge = kit.judge
    if judge is None:
        return None
    prompts = teacher.embed_prompts([[p] for p in judge.prompts]) if judge.prompts else teacher.text
    text, unsafe = (teacher.embed_prompts([[p] for p in texts]) if texts else np.zeros((0, prompts.shape[1]))
                    for texts in (judge.text_prompts, judge.unsafe_prompts))
    return prompts, text, unsafe, judge.device_config()
