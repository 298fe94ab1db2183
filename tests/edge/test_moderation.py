"""The one moderation rule (dkit.edge.infer.moderation): its order and margins, broadcasting over images and prompts,
and the device judge giving the same verdicts as the array function the evaluation uses."""

from __future__ import annotations

import numpy as np
import pytest

from dkit.edge.bundle.manifest import JudgeConfig
from dkit.edge.infer.moderation import moderate, penalise, verdict_agreement

NONE = np.zeros((0,))


@pytest.mark.parametrize(("prompt", "text", "unsafe", "score", "cfg", "expected"), [
    (0.5, [0.2], [0.1], 60.0, JudgeConfig(), "ok"),
    (0.5, [0.6], [0.1], 60.0, JudgeConfig(), "text"),
    (0.5, [0.6], [0.1], 60.0, JudgeConfig(text_margin=0.2), "ok"),  # the margin is a lead the text prompt needs
    (0.5, [0.6], [0.7], 60.0, JudgeConfig(), "blocked"),  # blocked wins over text
    (0.5, [0.6], [0.7], 60.0, JudgeConfig(unsafe_margin=0.3), "text"),
    (0.5, [0.2], [0.1], 10.0, JudgeConfig(), "no_match"),  # below no_match_score 15
    (0.5, [0.6], [0.1], 10.0, JudgeConfig(), "text"),  # text is decided before no_match
    (0.5, NONE, NONE, 60.0, JudgeConfig(), "ok"),  # no moderation prompts at all
    (0.5, [0.2], [0.1], None, JudgeConfig(), "ok"),  # no calibration (evaluation): no_match is not decided
])
def test_order_and_margins(prompt, text, unsafe, score, cfg, expected):
    got = moderate(prompt, np.asarray(text), np.asarray(unsafe), cfg, score=score)
    assert str(got) == expected


def test_broadcasts_over_images_and_prompts():
    prompt = np.array([[0.9, 0.1], [0.1, 0.1]])  # (N=2 images, P=2 prompts)
    text = np.array([[0.5], [0.3]])[:, None, :]  # (N, 1, T)
    unsafe = np.array([[0.0], [0.8]])[:, None, :]  # (N, 1, U)
    got = moderate(prompt, text, unsafe, JudgeConfig())
    assert got.tolist() == [["ok", "text"], ["blocked", "blocked"]]
    assert verdict_agreement(got, np.array([["ok", "ok"], ["blocked", "blocked"]])) == 0.75
    assert verdict_agreement(got[:0], got[:0]) is None


def test_penalty_applies_to_text_and_blocked_has_no_score():
    v = np.array(["ok", "text", "no_match", "blocked"])
    out = penalise(np.array([80.0, 80.0, 10.0, 90.0]), v, JudgeConfig(text_penalty=0.25))
    assert out[:3].tolist() == [80.0, 20.0, 10.0] and np.isnan(out[3])


def test_the_device_judge_uses_the_same_rule(judge_bundle):
    """Judge.judge (one frame) and moderate (arrays, as the evaluation calls it) agree on every image and prompt."""
    import cv2

    from dkit.edge.infer.judge import Judge
    from dkit.edge.infer.runtime import Runtime
    from tests.conftest import ASSETS

    photos = sorted((ASSETS / "data" / "photos").glob("*.jpg"))[:6]
    with Runtime.load(judge_bundle) as rt:
        judge = Judge(rt)
        prompts = ["a cat", "a raccoon driving a tractor", "a weapon"]
        for path in photos:
            emb = rt(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)).embedding
            for prompt in prompts:
                v = judge.judge(emb, prompt)
                cos = float(emb @ judge.embed_prompt(prompt))
                expected = moderate(cos, judge.text_emb @ emb, judge.unsafe_emb @ emb, judge.cfg,
                                    score=round(float(judge.to_score(cos)), 1))
                assert v.verdict == str(expected), (path.name, prompt)
