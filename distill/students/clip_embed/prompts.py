"""What the device scores, as the teacher embeds it: the kit's prompts (ontology classes, background prompts,
the judge's prompts) and the moderation verdicts compared between student and teacher.

`judge_prompts` is the one definition of the prompts the kiosk judges against, and `moderation_sets` their
embeddings: `dkit eval`'s `moderation_agreement` and the export's verdict report (dkit.export.judge) both use
them, so their figures are over the same (image, prompt) pairs.
"""

from __future__ import annotations

import numpy as np

from dkit.edge.bundle.manifest import JudgeConfig
from dkit.edge.infer.moderation import moderate, verdict_agreement


def ontology_prompts(kit) -> tuple[list[str], np.ndarray]:
    """Every prompt of every ontology class, once each, in the ontology's order, and (Q,) the index of the class
    each names: the prompts an operator would type for the kit's classes, one at a time."""
    texts: dict[str, int] = {}
    for c, prompts in enumerate(kit.ontology.classes.values()):
        for p in prompts:
            texts.setdefault(" ".join(p.split()), c)
    return list(texts), np.array(list(texts.values()), dtype=np.int64)


def judge_prompts(kit) -> list[str]:
    """The prompts the kiosk judges drawings against, for every moderation figure: the kit's `judge.prompt`
    then `judge.prompts`, once each; a kit that names none (or has no `judge:` section) is judged against its
    ontology's prompts (`ontology_prompts`)."""
    judge = kit.judge
    named = ([judge.prompt] if judge and judge.prompt else []) + (list(judge.prompts) if judge else [])
    return list(dict.fromkeys(named)) or ontology_prompts(kit)[0]


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
    """Share of (image, prompt) pairs whose moderation verdict (dkit.edge.infer.moderation, the device's rule with the
    kit's margins: blocked, text or neither) is the same for student and teacher.

    student, teacher: (N, D) normalised image embeddings; prompts: (P, D); text: (T, D) and unsafe: (U, D)
    moderation prompts. None when there is nothing to compare (no images, prompts or moderation prompts).
    """
    if not len(student) or not len(prompts) or not len(text) + len(unsafe):
        return None

    return verdict_agreement(moderation_verdicts(student, prompts, text, unsafe, cfg),
                             moderation_verdicts(teacher, prompts, text, unsafe, cfg))


def moderation_verdicts(emb: np.ndarray, prompts: np.ndarray, text: np.ndarray, unsafe: np.ndarray,
                        cfg: JudgeConfig, *, score: np.ndarray | None = None) -> np.ndarray:
    """(N, P) the device's verdicts (dkit.edge.infer.moderation.moderate) of N images against P prompts; `score` (N, P)
    the 0-100 scores (None: no calibration, so no `no_match`)."""
    return moderate(emb @ prompts.T, (emb @ text.T)[:, None, :], (emb @ unsafe.T)[:, None, :], cfg, score=score)


def moderation_sets(kit, teacher) -> tuple[np.ndarray, np.ndarray, np.ndarray, JudgeConfig]:
    """(P, D) `judge_prompts`, (T, D) text and (U, D) unsafe moderation prompts, each one prompt x the templates
    as the bundle ships them (prompts.npy), and the device's JudgeConfig (the kit's `judge:`, or its defaults with
    no moderation prompts when the kit has none)."""
    judge = kit.judge
    prompts = teacher.embed_prompts([[p] for p in judge_prompts(kit)])
    text, unsafe = (teacher.embed_prompts([[p] for p in texts]) if texts else np.zeros((0, prompts.shape[1]))
                    for texts in ((judge.text_prompts, judge.unsafe_prompts) if judge else ((), ())))
    return prompts, text, unsafe, judge.device_config() if judge else JudgeConfig()


def _moderation_sets(kit, teacher) -> tuple[np.ndarray, np.ndarray, np.ndarray, JudgeConfig] | None:
    """`moderation_sets` for a kit with a `judge:` section; None without one (nothing to moderate in dkit eval)."""
    return None if kit.judge is None else moderation_sets(kit, teacher)
